"""Benchmark items of every task shape, and the one encoding step they share.

A reader turns a benchmark's files into items; `encode_items` resolves each item's images inside the benchmark root,
encodes every distinct image and caption once, and drops (counting, with named examples) the items whose image is
missing, outside the root or undecodable. Protocols then read similarities off `EncodedItems.sims(i)`, computed by
`encode.pair_cosines` as the pairwise task's are.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..encode import Encoder, pair_cosines, unreadable_rows
from ..images import ImageRef, resolve_image

logger = logging.getLogger(__name__)

MAX_EXAMPLES = 5


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


@dataclass
class BenchmarkData:
    """What a reader returns: the items, and what it dropped while parsing (reason -> count)."""

    root: str
    items: list
    parse_skips: Counter = field(default_factory=Counter)
    meta: dict = field(default_factory=dict)


@dataclass
class EncodedItems:
    """Items that could be scored, with index arrays into the image and text tables, and the skip bookkeeping."""

    items: list
    image_table: torch.Tensor  # [I, D]
    text_table: torch.Tensor  # [T, D]
    image_index: list[np.ndarray]  # per item, rows of its images
    text_index: list[np.ndarray]  # per item, rows of its captions
    skips: dict[str, int]
    examples: dict[str, list[str]]
    num_input_items: int

    def sims(self, i: int) -> np.ndarray:
        """`[n_images, n_captions]` cosine similarities of item i (`pair_cosines`, so identical captions tie)."""
        img, txt = self.image_index[i], self.text_index[i]
        grid = pair_cosines(self.image_table, np.repeat(img, len(txt)), self.text_table, np.tile(txt, len(img)))
        return grid.reshape(len(img), len(txt))

    def text_sims(self, i: int) -> np.ndarray:
        """`[n_captions, n_captions]` caption-caption cosines of item i (SugarCrepe++'s text-only task)."""
        txt = self.text_index[i]
        grid = pair_cosines(self.text_table, np.repeat(txt, len(txt)), self.text_table, np.tile(txt, len(txt)))
        return grid.reshape(len(txt), len(txt))

    def bookkeeping(self) -> dict:
        """The counts every benchmark reports: scored items, the denominator, each skip reason, named examples."""
        out = {"num_items": len(self.items), "num_input_items": self.num_input_items, **self.skips}
        if any(self.examples.values()):
            out["skipped_examples"] = {k: v for k, v in self.examples.items() if v}
        return out


def encode_items(
    encoder: Encoder, data: BenchmarkData, allow_absolute: bool = False, image_dir: str | None = None
) -> EncodedItems:
    """Encode every distinct image and caption of `data.items` once; drop items whose images cannot be used."""
    root = image_dir or data.root
    items = list(data.items)
    resolved: dict[ImageRef, ImageRef | None] = {}
    for item in items:
        for ref in item.images:
            if ref not in resolved:
                resolved[ref] = resolve_image(root, ref, allow_absolute=allow_absolute)
    missing = [
        ref.file if ref.member is None else f"{ref.file}::{ref.member}" for ref, r in resolved.items() if r is None
    ]
    present = [item for item in items if all(resolved[ref] is not None for ref in item.images)]
    if missing:
        logger.warning("%d image(s) missing under %s (or outside it), e.g. %s", len(missing), root, missing[0])

    image_pos: dict[ImageRef, int] = {}
    for item in present:
        for ref in item.images:
            image_pos.setdefault(resolved[ref], len(image_pos))
    images = list(image_pos)
    image_table = encoder.encode_images(images)  # [I, D], NaN rows = undecodable
    bad = unreadable_rows(image_table).numpy()
    errors = getattr(encoder, "unreadable", {})
    unreadable = [f"{images[i].file}: {errors.get(images[i].file, 'unreadable')}" for i in np.flatnonzero(bad)]
    if unreadable:
        logger.warning("%d image(s) could not be decoded, e.g. %s", len(unreadable), unreadable[0])
    kept = [item for item in present if not any(bad[image_pos[resolved[ref]]] for ref in item.images)]
    if not kept:
        raise ValueError(
            f"{root}: no item can be scored ({len(missing)} images missing, {len(unreadable)} undecodable; "
            f"e.g. {(missing + unreadable)[:3]})"
        )

    text_pos: dict[str, int] = {}
    for item in kept:
        for caption in item.captions:
            text_pos.setdefault(caption, len(text_pos))
    text_table = encoder.encode_texts(list(text_pos))  # [T, D]
    dropped_missing = len(items) - len(present)
    return EncodedItems(
        items=kept,
        image_table=image_table,
        text_table=text_table,
        image_index=[np.array([image_pos[resolved[r]] for r in item.images], dtype=np.int64) for item in kept],
        text_index=[np.array([text_pos[c] for c in item.captions], dtype=np.int64) for item in kept],
        skips={
            "missing_images": len(missing),
            "unreadable_images": len(unreadable),
            "items_skipped_missing_image": dropped_missing,
            "items_skipped_unreadable_image": len(present) - len(kept),
            **{f"parse_skipped_{k}": v for k, v in sorted(data.parse_skips.items())},
        },
        examples={"missing_images": missing[:MAX_EXAMPLES], "unreadable_images": unreadable[:MAX_EXAMPLES]},
        num_input_items=len(items) + sum(data.parse_skips.values()),
    )


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
