"""The two HNC JSON schemas: the one reader (streaming, `hnc_clip.data.json_stream`) and the one writer.

The real train file is 8 GB (67,807 images, 8.2 M positive/negative pairs); it is read one image entry at a time.

Schemas (see `tests/data/README.md`):

- **train/val**: `{image_id: {"captions": {caption_id: {caption, label, type, cpt_p_id, ...}}}}`. `label` 1 is a
  positive, 0 a hard negative; a negative's `cpt_p_id` is the *integer* id of its positive, whose key is a *string*.
- **test**: `{"<image>.jpg": {"0": {caption, label, type, replaced}, "1": {...}, ...}}`; the positive at index 2k
  is paired with the negative at index 2k+1.

Both are written by `HncWriter` / `write_hnc` from `HncPair`s (`hnc_train_entry`, `hnc_test_entry`): the demo's
world, the benchmarks and the tests use that one writer. Both read into the same flat pair records (`PAIR_COLUMNS`),
produced column-wise in batches (`iter_pair_batches`) so the Arrow writer takes them without a Python dict per pair.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .json_stream import HncFormatError, MemberReader, iter_members, paused_gc  # noqa: F401

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


def _is_train_entry(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("captions"), dict)


def _is_test_entry(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        k.isdigit() and isinstance(v, dict) and "caption" in v and "label" in v for k, v in value.items()
    )


# How an image entry of each schema looks (also how `MemberReader.seek` tells a top-level member from a nested one).
LOOKS_LIKE_ENTRY = {TRAIN_SCHEMA: _is_train_entry, TEST_SCHEMA: _is_test_entry}


def detect_schema(path: str) -> str:
    """Return `TRAIN_SCHEMA` or `TEST_SCHEMA` by looking at the first image entry only (cheap on 8 GB)."""
    first = next(iter_members(path, expected=EXPECTED_SHAPES), None)
    if first is None:
        raise HncFormatError(f"{path}: empty JSON object or not a JSON object. Expected one of: {EXPECTED_SHAPES}")
    for schema, looks_like in LOOKS_LIKE_ENTRY.items():
        if looks_like(first[1]):
            return schema
    raise HncFormatError(f"{path}: not an HNC file. Expected one of: {EXPECTED_SHAPES}")


def _image_names(key: str) -> tuple[str, str]:
    """(image_id, image_file): GQA ids appear as `2386621` in train files and `n100552.jpg` in test files."""
    stem, ext = os.path.splitext(key)
    return (stem, key) if ext.lower() in (".jpg", ".jpeg", ".png") else (key, f"{key}.jpg")


def _clean(text) -> str:
    return text.strip() if isinstance(text, str) else ""


def _new_columns() -> dict[str, list]:
    return {name: [] for name in PAIR_COLUMNS}


def _add_pair(cols: dict[str, list], image: tuple[str, str], pos_id, neg_id, pos: dict, neg: dict, type_,
              skips: Counter) -> bool:
    """Append one pair to the columns; False (counted in `skips`) when either caption is empty."""
    positive, negative = _clean(pos.get("caption")), _clean(neg.get("caption"))
    if not positive or not negative:
        skips["empty_caption"] += 1
        return False
    image_id, image_file = image
    cols["pair_id"].append(f"{image_id}/{pos_id}/{neg_id}")
    cols["image_id"].append(image_id)
    cols["image_file"].append(image_file)
    cols["positive"].append(positive)
    cols["negative"].append(negative)
    cols["type"].append(str(type_ or "unknown"))
    return True


def _train_pairs(cols: dict[str, list], image: tuple[str, str], entry: dict, skips: Counter) -> None:
    captions = entry.get("captions")
    if not isinstance(captions, dict):
        skips["image_entry_without_captions"] += 1
        return
    positives, negatives = {}, []
    for cid, cap in captions.items():
        if not isinstance(cap, dict):
            skips["caption_not_an_object"] += 1
        elif cap.get("label") == 1:
            positives[str(cid)] = cap
        elif cap.get("label") == 0:
            negatives.append((cid, cap))
        else:
            skips["caption_label_not_0_or_1"] += 1
    paired: set[str] = set()
    for cid, cap in negatives:
        pos_id = cap.get("cpt_p_id")
        pos = positives.get(str(pos_id)) if pos_id is not None else None
        if pos is None:
            skips["negative_without_positive"] += 1
            continue
        if _add_pair(cols, image, pos_id, cid, pos, cap, cap.get("type") or pos.get("type"), skips):
            paired.add(str(pos_id))
    if unpaired := len(set(positives) - paired):
        skips["positive_without_negative"] += unpaired


# A test-schema caption key: a decimal index without a sign or leading zeros ("07" would pair with "6" and "7").
_INDEX = re.compile(r"0|[1-9][0-9]*")


def _test_pairs(cols: dict[str, list], image: tuple[str, str], entry: dict, skips: Counter) -> None:
    """The positive at key 2k pairs with the negative at key 2k+1, by key: keys 0, 1, 2, 5 give the pair (0, 1)
    and two captions without a partner, not a pair (2, 5)."""
    by_index: dict[int, object] = {}
    for key, cap in entry.items():
        if not (isinstance(key, str) and _INDEX.fullmatch(key)):
            skips["test_key_not_an_index"] += 1
        elif not isinstance(cap, dict):
            skips["caption_not_an_object"] += 1
        else:
            by_index[int(key)] = cap
    for k in sorted({i // 2 for i in by_index}):
        pos, neg = by_index.get(2 * k), by_index.get(2 * k + 1)
        if pos is None or neg is None:
            skips["test_caption_without_partner"] += 1
            continue
        if pos.get("label") != 1 or neg.get("label") != 0:
            skips["test_pair_labels_not_1_0"] += 1
            continue
        _add_pair(cols, image, 2 * k, 2 * k + 1, pos, neg, pos.get("type") or neg.get("type"), skips)


PAIR_MAKERS = {TRAIN_SCHEMA: _train_pairs, TEST_SCHEMA: _test_pairs}


def pair_batches(
    members: Iterator[tuple[str, object]], schema: str, skips: Counter, batch_size: int = 10_000
) -> Iterator[dict[str, list]]:
    """Image entries `(key, value)` → column batches of pairs `{column: [~batch_size values]}`."""
    make_pairs = PAIR_MAKERS[schema]
    cols = _new_columns()
    for image_key, entry in members:
        if not isinstance(entry, dict):
            skips["image_entry_not_an_object"] += 1
            continue
        make_pairs(cols, _image_names(image_key), entry, skips)
        if len(cols["pair_id"]) >= batch_size:
            yield cols
            cols = _new_columns()
    if cols["pair_id"]:
        yield cols


def iter_pair_batches(
    path: str, schema: str | None = None, skips: Counter | None = None, batch_size: int = 10_000
) -> Iterator[dict[str, list]]:
    """Yield the pairs of an HNC file (either schema), streaming, as column batches `{column: [~batch_size values]}`.

    Problems with single captions are counted into `skips` (reason -> count) rather than raised: a file of 8 M
    pairs with a few broken ones should still train. Invalid JSON raises `HncFormatError` with the position.
    """
    schema = schema or detect_schema(path)
    if schema not in SCHEMAS:
        raise ValueError(f"unknown HNC schema {schema!r}; expected one of {SCHEMAS}")
    members = iter_members(path, expected=EXPECTED_SHAPES)
    yield from pair_batches(members, schema, skips if skips is not None else Counter(), batch_size)


def iter_hnc_pairs(path: str, schema: str | None = None, skips: Counter | None = None) -> Iterator[dict]:
    """`iter_pair_batches`, one pair record (`PAIR_COLUMNS` → value) at a time."""
    for cols in iter_pair_batches(path, schema, skips):
        for row in zip(*(cols[name] for name in PAIR_COLUMNS)):
            yield dict(zip(PAIR_COLUMNS, row))


# ---------------------------------------------------------------------------------------------------------------
# Writing


@dataclass
class HncPair:
    """One (positive, hard negative) caption pair of an image, as the writer lays it out."""

    positive: str
    negative: str
    type: str = "unknown"
    replaced: list | None = None  # the negative's [old, new] words, as HNC records them
    positive_fields: dict = field(default_factory=dict)  # further caption fields (bboxes, ambiguity, ...)
    negative_fields: dict = field(default_factory=dict)


def hnc_train_entry(pairs: Iterable[HncPair], first_caption_id: int = 0) -> dict:
    """One image in the train/val schema: `{"captions": {id: record}}`, each positive at id n and its negative at
    n+1 with `cpt_p_id` n (an int, while keys are strings: exactly as in HNC). Ids are global in HNC, so pass the
    next free id as `first_caption_id` (it advances by 2 per pair)."""
    captions = {}
    cid = first_caption_id
    for pair in pairs:
        captions[str(cid)] = {
            "caption": pair.positive, "label": 1, "type": pair.type, **pair.positive_fields,
            "replaced": None, "cpt_p_id": None,
        }  # fmt: skip
        captions[str(cid + 1)] = {
            "caption": pair.negative, "label": 0, "type": pair.type, **pair.negative_fields,
            "replaced": pair.replaced, "cpt_p_id": cid,
        }  # fmt: skip
        cid += 2
    return {"captions": captions}


def hnc_test_entry(pairs: Iterable[HncPair]) -> dict:
    """One image in the test schema: `{"0": positive, "1": its negative, "2": ...}` (positive at 2k)."""
    entry = {}
    for k, pair in enumerate(pairs):
        entry[str(2 * k)] = {"caption": pair.positive, "label": 1, "type": pair.type, "replaced": None}
        entry[str(2 * k + 1)] = {"caption": pair.negative, "label": 0, "type": pair.type, "replaced": pair.replaced}
    return entry


class HncWriter:
    """Writes an HNC file one image entry at a time, so a file of any size needs one entry in memory:

        with HncWriter(path) as w:
            w.add(image_id, hnc_train_entry(pairs, next_id))  # test schema: the key is the image file

    The file appears at `path` only when the writer closes without an error (written to `path.tmp`, renamed), so a
    reader never sees half a file. The bytes equal `json.dump(dict_of_all_entries, f, ensure_ascii=False)` + "\n".
    """

    def __init__(self, path: str):
        self.path, self.tmp = path, f"{path}.tmp"
        self.f = open(self.tmp, "w", encoding="utf-8")
        self.f.write("{")
        self.count = 0

    def add(self, key: str, entry: dict) -> int:
        """Append one image entry; returns the characters written."""
        key_text, entry_text = json.dumps(key, ensure_ascii=False), json.dumps(entry, ensure_ascii=False)
        text = f"{', ' if self.count else ''}{key_text}: {entry_text}"
        self.f.write(text)
        self.count += 1
        return len(text)

    def close(self, ok: bool = True) -> None:
        if self.f.closed:
            return
        if ok:
            self.f.write("}\n")
        self.f.close()
        if ok:
            os.replace(self.tmp, self.path)
        else:
            os.remove(self.tmp)

    def __enter__(self) -> HncWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def write_hnc(path: str, entries: dict | Iterable[tuple[str, dict]]) -> str:
    """Write `{key: entry}` (or `(key, entry)` pairs) as an HNC file; see `HncWriter`."""
    with HncWriter(path) as writer:
        for key, entry in entries.items() if isinstance(entries, dict) else entries:
            writer.add(key, entry)
    return path
