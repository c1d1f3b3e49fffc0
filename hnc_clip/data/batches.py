"""What the trainer needs to know about a dataset and its batches, kept beside the data that defines it: the columns
the collator reads, how many pairs a full batch holds, the counts a batch carries, and which of its rows are
repeats (`HncBatch` holds the keys)."""

from __future__ import annotations

import numpy as np
import torch

from .hnc import PAIR_COLUMNS
from .table import TABLE_COLUMNS, HardImagePairs

# The dataset columns the collator reads: the Trainer must keep them although CLIPModel.forward names none of them.
COLLATOR_COLUMNS = (*PAIR_COLUMNS, *TABLE_COLUMNS, "pixel_values")
# The per-batch counts (`HncBatch`) that are not model inputs, summed per log.
BATCH_COUNTS = ("skipped_images", "truncated_captions")


def pairs_per_batch(dataset, batch_size: int) -> int:
    """Pairs a full batch of `batch_size` rows holds: a table's hard-image negatives come as further pairs
    (`HardImagePairs`), so such a batch holds up to twice its rows."""
    return 2 * batch_size if isinstance(dataset, HardImagePairs) else batch_size


def pixel_affine_of(collator) -> torch.Tensor | None:
    """The [2, 3] float32 (a; b) that normalises uint8 pixels (`HncCollator.pixel_affine`, through the collators
    that wrap one), or None: the same for every batch, so no batch carries it."""
    while collator is not None and not hasattr(collator, "pixel_affine"):
        collator = getattr(collator, "collator", None)
    affine = getattr(collator, "pixel_affine", None)
    return None if affine is None else torch.as_tensor(np.stack(affine), dtype=torch.float32)


def pop_counts(batch: dict) -> dict:
    """Take the counts out of a batch: `BATCH_COUNTS` (None where absent) and, under "counts", the collator's own
    (`HncCollator.count_names`)."""
    counts = {name: batch.pop(name, None) for name in BATCH_COUNTS}
    counts["counts"] = batch.pop("counts", None) or {}
    return counts


def drop_repeated_rows(batch: dict, real: int) -> dict:
    """`batch` without its pairs from input rows `real` on (the rows accelerate repeats to even out the last
    evaluation batch): each distinct image and caption stays encoded once, indexed by the kept pairs. A hard-image
    pair goes with the row that brought it (`kept_rows`, `input_rows`); "skipped_images" counts the real rows'
    pairs that had no readable image."""
    kept = batch.get("kept_rows")
    keep = kept < real if kept is not None else None  # [B'] bool
    readable = int(keep.sum()) if keep is not None else 0
    origins = batch.get("input_rows")  # [B + E] with hard-image pairs: the real rows' pairs are more than `real`
    expected = int((origins < real).sum()) if origins is not None else real
    batch = dict(batch, skipped_images=expected - readable)
    if readable == 0:
        return {"pixel_values": batch["pixel_values"][:0], "skipped_images": batch["skipped_images"]}
    if readable == len(kept):
        return batch
    both = keep.repeat(batch["text_index"].numel() // len(kept))  # [(1+K)·B'] positives; K negatives blocks
    batch.update(image_index=batch["image_index"][keep], text_index=batch["text_index"][both],
                 image_ids=batch["image_ids"][keep], kept_rows=kept[keep])  # fmt: skip
    mask = batch.get("negative_mask")
    if mask is not None:  # [K·B'] k-major, as the negative blocks
        batch["negative_mask"] = mask[keep.repeat(mask.numel() // len(kept))]
    return batch
