"""Batches that show each image several of its own hard negatives (`--group_by_image k`).

HNC has ~121 pairs per GQA image (8 per synthetic scene), but a random batch of B pairs from millions almost never
holds two pairs of one image: each image then meets only the one hard negative of its own row, and a negative type
that is rare in the rows (say, relation flips) is rarely the one an image has to beat. This sampler lays pairs out
in groups of `k` pairs of the same image, shuffled, so a batch of B rows holds B/k images with k of their negatives
each. With the `hnc` loss every image's candidates are then [all positives; all negatives] of the batch, including
its siblings' negatives (false for it too); the siblings' positives are masked (`--mask_same_image`).

The order is a pure function of (seed, epoch), so a resumed run skips exactly the batches it had seen.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class ImageGroupedSampler(Sampler[int]):
    def __init__(self, image_ids: Sequence[str], group_size: int, seed: int = 0):
        if group_size < 1:
            raise ValueError(f"--group_by_image must be >= 1, got {group_size}")
        rows = defaultdict(list)
        for i, image_id in enumerate(image_ids):
            rows[image_id].append(i)
        self.rows = list(rows.values())
        self.group_size, self.seed, self.epoch = group_size, seed, 0
        self.length = len(image_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(f"{self.seed}/{self.epoch}")
        groups = []
        for rows in self.rows:
            rows = rows[:]
            rng.shuffle(rows)
            groups += [rows[i : i + self.group_size] for i in range(0, len(rows), self.group_size)]
        rng.shuffle(groups)
        for group in groups:
            yield from group


def image_grouped_sampler(dataset, group_size: int, seed: int = 0) -> ImageGroupedSampler:
    """The sampler for a dataset of pairs, from its `image_id` column, read as Arrow: through the dataset's image
    transform it would decode every image first."""
    return ImageGroupedSampler(dataset.with_format("arrow")["image_id"].to_pylist(), group_size, seed=seed)
