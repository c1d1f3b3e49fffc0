"""Benchmark items of every task shape, and the one encoding step every evaluation shares.

A reader turns a benchmark's files into items; `encode_unique` resolves each item's images inside a root, encodes
every distinct image and caption once, and drops (counting, with named examples) the items whose image is missing,
outside the root or undecodable. The pairwise and retrieval tasks call it on their items, the benchmarks through
`encode_items`; protocols then read similarities off `EncodedItems.sims(i)`, computed by `encode.pair_cosines`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..encode import Encoder, pair_cosines, unreadable_rows
from ..images import ImageRef, resolve_image

logger = logging.getLogger(__name__)

MAX_EXAMPLES = 5  # how many skipped items each reason names in the results


@dataclass
class ChoiceItem:
    """One image, K caption options, `correct` the index of the true one (2-way and n-way caption selection)."""

    item_id: str
    image: ImageRef
    captions: list[str]
    correct: int
    type: str = "all"
    meta: dict = field(default_factory=dict)

    @property
    def images(self) -> list[ImageRef]:
        return [self.image]


@dataclass
class GroupItem:
    """Winoground's 2x2 group: caption i describes image i."""

    item_id: str
    images: list[ImageRef]
    captions: list[str]
    type: str = "all"
    meta: dict = field(default_factory=dict)


@dataclass
class ImageCaptions:
    """One retrieval gallery image and every caption that describes it."""

    image: ImageRef
    captions: list[str] = field(default_factory=list)

    @property
    def images(self) -> list[ImageRef]:
        return [self.image]


@dataclass
class BenchmarkData:
    """What a reader returns: the items, and what it dropped while parsing (reason -> count)."""

    root: str
    items: list
    parse_skips: Counter = field(default_factory=Counter)
    meta: dict = field(default_factory=dict)


def unique_index(items: Sequence[Hashable]) -> tuple[list, np.ndarray]:
    """(distinct items in first-seen order, index of each item into that list)."""
    position: dict = {}
    index = np.fromiter((position.setdefault(x, len(position)) for x in items), dtype=np.int64, count=len(items))
    return list(position), index


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """`[N + 1]` start of each item's entries in a flat array, and the end."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def _any_per_item(flags: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """`[n]` whether any entry of item i is flagged (`owner[e]` is the item of entry e)."""
    return np.bincount(owner, weights=flags, minlength=n) > 0


@dataclass
class EncodedItems:
    """Items that could be scored, with index arrays into the image and text tables, and the skip bookkeeping.

    The index arrays are flat, item after item (`image_index[image_offsets[i]:image_offsets[i + 1]]` are item i's
    rows), so a task with one image and two captions per item reads them as `[N]` and `[N, 2]` without a loop.
    """

    items: list
    image_table: torch.Tensor  # [I, D], NaN rows = undecodable images (their items are not in `items`)
    text_table: torch.Tensor  # [T, D]
    image_index: np.ndarray  # [sum of images per item] rows of image_table
    text_index: np.ndarray  # [sum of captions per item] rows of text_table
    image_offsets: np.ndarray  # [N + 1]
    text_offsets: np.ndarray  # [N + 1]
    skips: dict[str, int]
    examples: dict[str, list[str]]
    num_input_items: int

    @property
    def num_images(self) -> int:
        """Distinct images that were encoded and decoded."""
        return len(self.image_table) - self.skips["unreadable_images"]

    def images_of(self, i: int) -> np.ndarray:
        return self.image_index[self.image_offsets[i] : self.image_offsets[i + 1]]

    def captions_of(self, i: int) -> np.ndarray:
        return self.text_index[self.text_offsets[i] : self.text_offsets[i + 1]]

    def sims(self, i: int) -> np.ndarray:
        """`[n_images, n_captions]` cosine similarities of item i (`pair_cosines`, so identical captions tie)."""
        img, txt = self.images_of(i), self.captions_of(i)
        grid = pair_cosines(self.image_table, np.repeat(img, len(txt)), self.text_table, np.tile(txt, len(img)))
        return grid.reshape(len(img), len(txt))

    def text_sims(self, i: int) -> np.ndarray:
        """`[n_captions, n_captions]` caption-caption cosines of item i (SugarCrepe++'s text-only task)."""
        txt = self.captions_of(i)
        grid = pair_cosines(self.text_table, np.repeat(txt, len(txt)), self.text_table, np.tile(txt, len(txt)))
        return grid.reshape(len(txt), len(txt))

    def bookkeeping(self) -> dict:
        """The counts every benchmark reports: scored items, the denominator, each skip reason, named examples."""
        out = {"num_items": len(self.items), "num_input_items": self.num_input_items, **self.skips}
        if any(self.examples.values()):
            out["skipped_examples"] = {k: v for k, v in self.examples.items() if v}
        return out


def _name(ref: ImageRef) -> str:
    return ref.file if ref.member is None else f"{ref.file}::{ref.member}"


def encode_unique(
    encoder: Encoder, items: Sequence, root: str | None, allow_absolute: bool = False, texts_by_slot: bool = False
) -> EncodedItems:
    """Encode every distinct image (resolved under `root`) and caption of `items` once; drop the items that need an
    image that is missing, outside `root` or undecodable, counting each reason and naming a few examples.

    `items` have `images` (`ImageRef`s) and `captions`. Each distinct reference is resolved once, and references
    that resolve to one file (and box) are one image. Captions are encoded only for the items kept, in first-seen
    order, and none when no kept item has one (the caller names why there is nothing to score). `texts_by_slot`
    orders them slot by slot instead (every item's first caption, then every second one, ...): the pairwise task
    encodes its positives, then its negatives, as it always has, because a caption's embedding depends in its last
    bits on the captions it is batched (padded) with.

    Raises `FileNotFoundError` when items name images and not one of them exists under `root`.
    """
    items = list(items)
    n_images = np.array([len(item.images) for item in items], dtype=np.int64)  # [N]
    owner = np.repeat(np.arange(len(items)), n_images)  # [E] item of each image entry
    refs = [ref for item in items for ref in item.images]  # [E]
    resolved = {ref: resolve_image(root, ref, allow_absolute=allow_absolute) for ref in dict.fromkeys(refs)}
    missing = [_name(ref) for ref, found in resolved.items() if found is None]
    if missing:
        logger.warning("%d image(s) missing under %r (or outside it), e.g. %s; their items are skipped",
                       len(missing), root, missing[0])  # fmt: skip
        if len(missing) == len(resolved):
            raise FileNotFoundError(f"none of the {len(missing)} images was found under {root!r} (e.g. {missing[:3]})")
    lost = np.fromiter((resolved[ref] is None for ref in refs), dtype=bool, count=len(refs))  # [E]
    present = ~_any_per_item(lost, owner, len(items))  # [N]

    encoded = present[owner]  # [E] entries of the items whose images all exist
    images, image_index = unique_index([resolved[ref] for ref, e in zip(refs, encoded) if e])  # [I], [E_encoded]
    image_table = encoder.encode_images(images) if images else torch.empty(0, 0)  # [I, D], NaN rows = undecodable
    bad = unreadable_rows(image_table).numpy()
    errors = getattr(encoder, "unreadable", {})
    unreadable = [f"{images[i].file}: {errors.get(images[i].file, 'unreadable')}" for i in np.flatnonzero(bad)]
    if unreadable:
        logger.warning("%d image(s) could not be decoded, e.g. %s; their items are skipped",
                       len(unreadable), unreadable[0])  # fmt: skip
    entry_bad = np.zeros(len(refs), dtype=bool)  # [E]
    entry_bad[encoded] = bad[image_index]
    keep = present & ~_any_per_item(entry_bad, owner, len(items))  # [N]
    kept = [item for item, k in zip(items, keep) if k]

    captions = [caption for item in kept for caption in item.captions]  # [C], item by item
    n_captions = np.array([len(item.captions) for item in kept], dtype=np.int64)
    order = np.arange(len(captions))
    if texts_by_slot:
        slot = order - np.repeat(_offsets(n_captions)[:-1], n_captions)  # [C] position of each caption in its item
        order = np.argsort(slot, kind="stable")
    texts, by_order = unique_index([captions[i] for i in order])
    text_index = np.empty_like(by_order)
    text_index[order] = by_order  # back to item by item
    text_table = encoder.encode_texts(texts) if texts else torch.empty(0, 0)  # [T, D]
    return EncodedItems(
        items=kept,
        image_table=image_table,
        text_table=text_table,
        image_index=image_index[keep[owner[encoded]]],
        text_index=text_index,
        image_offsets=_offsets(n_images[keep]),
        text_offsets=_offsets(n_captions),
        skips={
            "missing_images": len(missing),
            "unreadable_images": len(unreadable),
            "items_skipped_missing_image": len(items) - int(present.sum()),
            "items_skipped_unreadable_image": int(present.sum()) - len(kept),
        },
        examples={"missing_images": missing[:MAX_EXAMPLES], "unreadable_images": unreadable[:MAX_EXAMPLES]},
        num_input_items=len(items),
    )


def encode_items(
    encoder: Encoder, data: BenchmarkData, allow_absolute: bool = False, image_dir: str | None = None
) -> EncodedItems:
    """`encode_unique` of a benchmark's items under its root (or `image_dir`), with the reader's parse skips."""
    root = image_dir or data.root
    encoded = encode_unique(encoder, data.items, root, allow_absolute)
    if not encoded.items:
        missing, unreadable = encoded.examples["missing_images"], encoded.examples["unreadable_images"]
        raise ValueError(
            f"{root}: no item can be scored ({encoded.skips['missing_images']} images missing, "
            f"{encoded.skips['unreadable_images']} undecodable; e.g. {(missing + unreadable)[:3]})"
        )
    encoded.skips.update({f"parse_skipped_{k}": v for k, v in sorted(data.parse_skips.items())})
    encoded.num_input_items += sum(data.parse_skips.values())
    return encoded


def choice_margins(encoded: EncodedItems) -> tuple[np.ndarray, np.ndarray]:
    """Per item (score of the true caption, highest score among the other captions)."""
    true, other = [], []
    for i, item in enumerate(encoded.items):
        row = encoded.sims(i)[0]  # [K]
        true.append(row[item.correct])
        other.append(np.delete(row, item.correct).max())
    return np.asarray(true), np.asarray(other)


def group_sims(encoded: EncodedItems) -> dict[str, np.ndarray]:
    """{"c0_i0": [G], "c0_i1": [G], "c1_i0": [G], "c1_i1": [G]} for 2x2 groups."""
    s = np.stack([encoded.sims(i) for i in range(len(encoded.items))])  # [G, image, caption]
    return {"c0_i0": s[:, 0, 0], "c0_i1": s[:, 1, 0], "c1_i0": s[:, 0, 1], "c1_i1": s[:, 1, 1]}


def by_type(values: Sequence[bool], types: Sequence[str]) -> tuple[dict[str, float], dict[str, int]]:
    """(accuracy per type, count per type), types sorted."""
    groups: dict[str, list[bool]] = {}
    for v, t in zip(values, types):
        groups.setdefault(str(t), []).append(bool(v))
    names = sorted(groups)
    return {t: float(np.mean(groups[t])) for t in names}, {t: len(groups[t]) for t in names}
