"""Streaming readers for the two HNC JSON schemas.

The real train file is 8 GB (67,807 images, 8.2 M positive/negative pairs), so nothing here calls
`json.load` on a whole file: `ijson` walks it one image at a time and memory stays flat in file size.

Schemas (see `shared/data/README.md`):

- **train/val**: `{image_id: {"captions": {caption_id: {caption, label, type, cpt_p_id, ...}}}}`. `label` 1 is a
  positive, 0 a hard negative; a negative's `cpt_p_id` is the *integer* id of its positive, whose key is a *string*.
- **test**: `{"<image>.jpg": {"0": {caption, label, type, replaced}, "1": {...}, ...}}`; the positive at index 2k
  is paired with the negative at index 2k+1.

Both become the same flat pair records (`PAIR_COLUMNS`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator

import ijson

logger = logging.getLogger(__name__)

TRAIN_SCHEMA = "hnc_train"
TEST_SCHEMA = "hnc_test"
SCHEMAS = (TRAIN_SCHEMA, TEST_SCHEMA)

# One record per (image, positive caption, hard-negative caption).
PAIR_COLUMNS = ("pair_id", "image_id", "image_file", "positive", "negative", "type")

EXPECTED_SHAPES = (
    f"{TRAIN_SCHEMA}: {{image_id: {{'captions': {{caption_id: {{'caption', 'label', 'type', 'cpt_p_id'}}}}}}}}; "
    f"{TEST_SCHEMA}: {{'<image>.jpg': {{'0': {{'caption', 'label', 'type'}}, '1': {{...}}}}}}"
)


class HncFormatError(ValueError):
    """A file is not valid JSON, or is valid JSON in neither HNC schema."""


def _open(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HNC file not found: {path}")
    return open(path, "rb")


def _wrap_json_error(path: str, err: Exception, f=None) -> HncFormatError:
    # ijson's message shows the text around the error but no offset; the stream position (read-ahead buffered,
    # so within 64 KiB past the error) locates it in a multi-GB file.
    where = f" near byte {f.tell():,}" if f is not None and not f.closed else ""
    detail = " ".join(str(err).split())
    return HncFormatError(f"{path}: invalid JSON{where} ({detail})")


def detect_schema(path: str) -> str:
    """Return `TRAIN_SCHEMA` or `TEST_SCHEMA` by looking at the first image entry only (cheap on 8 GB)."""
    with _open(path) as f:
        try:
            first = next(ijson.kvitems(f, "", use_float=True), None)
        except ijson.JSONError as err:
            raise _wrap_json_error(path, err, f) from err
    if first is None:
        raise HncFormatError(f"{path}: empty JSON object or not a JSON object. Expected one of: {EXPECTED_SHAPES}")
    _, value = first
    if isinstance(value, dict) and isinstance(value.get("captions"), dict):
        return TRAIN_SCHEMA
    if isinstance(value, dict) and value and all(
        k.isdigit() and isinstance(v, dict) and "caption" in v and "label" in v for k, v in value.items()
    ):
        return TEST_SCHEMA
    raise HncFormatError(f"{path}: not an HNC file. Expected one of: {EXPECTED_SHAPES}")


def _image_names(key: str) -> tuple[str, str]:
    """(image_id, image_file): GQA ids appear as `2386621` in train files and `n100552.jpg` in test files."""
    stem, ext = os.path.splitext(key)
    return (stem, key) if ext.lower() in (".jpg", ".jpeg", ".png") else (key, f"{key}.jpg")


def _clean(text) -> str:
    return text.strip() if isinstance(text, str) else ""


def _pair(image_key: str, pos_id, neg_id, pos: dict, neg: dict, type_: str | None, skips: Counter) -> dict | None:
    """One pair record, or None (counted in `skips`) when either caption is empty."""
    positive, negative = _clean(pos.get("caption")), _clean(neg.get("caption"))
    if not positive or not negative:
        skips["empty_caption"] += 1
        return None
    image_id, image_file = _image_names(image_key)
    return {
        "pair_id": f"{image_id}/{pos_id}/{neg_id}",
        "image_id": image_id,
        "image_file": image_file,
        "positive": positive,
        "negative": negative,
        "type": str(type_ or "unknown"),
    }


def _train_pairs(image_key: str, entry: dict, skips: Counter) -> Iterator[dict]:
    captions = entry.get("captions") or {}
    positives = {str(cid): c for cid, c in captions.items() if c.get("label") == 1}
    paired: set[str] = set()
    for cid, cap in captions.items():
        if cap.get("label") != 0:
            continue
        pos_id = cap.get("cpt_p_id")
        pos = positives.get(str(pos_id)) if pos_id is not None else None
        if pos is None:
            skips["negative_without_positive"] += 1
            continue
        pair = _pair(image_key, pos_id, cid, pos, cap, cap.get("type") or pos.get("type"), skips)
        if pair is not None:
            paired.add(str(pos_id))
            yield pair
    if unpaired := len(set(positives) - paired):
        skips["positive_without_negative"] += unpaired


def _test_pairs(image_key: str, entry: dict, skips: Counter) -> Iterator[dict]:
    ordered = sorted(entry.items(), key=lambda kv: int(kv[0]))
    for i in range(0, len(ordered) - 1, 2):
        (pid, pos), (nid, neg) = ordered[i], ordered[i + 1]
        if pos.get("label") != 1 or neg.get("label") != 0:
            skips["test_pair_labels_not_1_0"] += 1
            continue
        pair = _pair(image_key, pid, nid, pos, neg, pos.get("type") or neg.get("type"), skips)
        if pair is not None:
            yield pair
    if len(ordered) % 2:
        skips["test_caption_without_partner"] += 1


def iter_hnc_pairs(path: str, schema: str | None = None, skips: Counter | None = None) -> Iterator[dict]:
    """Yield pair records (`PAIR_COLUMNS`) from an HNC file of either schema, streaming.

    Problems with single captions are counted into `skips` (reason -> count) rather than raised: a file of 8 M
    pairs with a few broken ones should still train. Invalid JSON raises `HncFormatError` with the position.
    """
    schema = schema or detect_schema(path)
    if schema not in SCHEMAS:
        raise ValueError(f"unknown HNC schema {schema!r}; expected one of {SCHEMAS}")
    skips = skips if skips is not None else Counter()
    make_pairs = _train_pairs if schema == TRAIN_SCHEMA else _test_pairs
    with _open(path) as f:
        try:
            for image_key, entry in ijson.kvitems(f, "", use_float=True):
                if not isinstance(entry, dict):
                    skips["image_entry_not_an_object"] += 1
                    continue
                yield from make_pairs(str(image_key), entry, skips)
        except ijson.JSONError as err:
            raise _wrap_json_error(path, err, f) from err
