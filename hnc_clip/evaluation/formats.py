"""Benchmark file formats -> one pair record shape (pairwise) or image-captions items (retrieval).

A pair file is a benchmark file of a known layout: it is read by the benchmark registry's reader for that layout
(`benchmarks.registry.FILE_LAYOUTS`, the readers `--benchmark` uses), and its items become the records of
`hnc_clip.data.hnc` (`pair_id, image_id, image_file, positive, negative, type`) plus `bbox` (None, or ARO's crop box),
so the scoring code never sees a format. Formats are detected from the
first record only (`detect_format`), which stays cheap on the 8 GB HNC train file; `--data_format` overrides it.
Every record's fields are read by type (`.records.Record`): a record that lacks a field is counted
(`record_missing_keys`), a field of the wrong type raises `DataFileError` naming the file, the record and the field.
A COCO Karpathy file (retrieval only) is read by the benchmarks' own `readers.read_karpathy`, not strict: it also
takes the train files' one caption per record.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator

import ijson

from ..data.hnc import TEST_SCHEMA, TRAIN_SCHEMA, HncFormatError, detect_schema
from .benchmarks.items import BenchmarkData, ImageCaptions
from .benchmarks.readers import read_karpathy
from .benchmarks.registry import FILE_LAYOUTS
from .images import ImageRef
from .records import BOM, DataFileError, read_json

logger = logging.getLogger(__name__)

STRUCTURE_CLIP = "structure_clip"
SUGARCREPE = "sugarcrepe"
ARO_RELATION = "aro_vg_relation"
ARO_ATTRIBUTION = "aro_vg_attribution"
COCO_KARPATHY = "coco_karpathy"

# Shape of each format, shown in the unknown-format error so a user can see what their file should look like.
FORMAT_SHAPES = {
    TEST_SCHEMA: "HNC test: {'<image>.jpg': {'0': {'caption', 'label': 1, 'type'}, '1': {..., 'label': 0}}}",
    TRAIN_SCHEMA: "HNC train/val: {image_id: {'captions': {id: {'caption', 'label', 'type', 'cpt_p_id'}}}}",
    STRUCTURE_CLIP: "Structure-CLIP (COCO): [{'image', 'text', 'neg_text': str | [str, ...]}]",
    SUGARCREPE: "SugarCrepe subset file: {id: {'filename', 'caption', 'negative_caption'}} (type = file name)",
    ARO_RELATION: "ARO VG-Relation: [{'image_path', 'true_caption', 'false_caption', 'relation_name', 'bbox_x', ...}]",
    ARO_ATTRIBUTION: "ARO VG-Attribution: [{'image_path', 'true_caption', 'false_caption', 'attributes', 'bbox_x'..}]",
    COCO_KARPATHY: "COCO Karpathy (retrieval only): [{'image', 'caption': [str, ...] | str}]",
}
PAIR_FORMATS = (TEST_SCHEMA, TRAIN_SCHEMA, STRUCTURE_CLIP, SUGARCREPE, ARO_RELATION, ARO_ATTRIBUTION)
RETRIEVAL_FORMATS = (COCO_KARPATHY, *PAIR_FORMATS)


class UnknownFormatError(DataFileError):
    """A data file matches none of the supported formats (the message lists them)."""


def _formats_help(formats: Iterable[str] = FORMAT_SHAPES) -> str:
    return "\n".join(f"  - {name}: {FORMAT_SHAPES[name]}" for name in formats)


def unknown_format(path: str, why: str, formats: Iterable[str] = FORMAT_SHAPES) -> UnknownFormatError:
    """The error for an unrecognised file, naming the file, the reason and every supported format."""
    return UnknownFormatError(
        f"{path}: {why}. Supported formats (pass --data_format NAME to force one):\n{_formats_help(formats)}"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------------------


def _first_record(path: str) -> tuple[str, str | None, object]:
    """('list', None, first item) or ('dict', first key, first value), reading only the start of the file."""
    with open(path, "rb") as f:
        head = f.read(4096)
        f.seek(len(BOM) if head.startswith(BOM) else 0)  # a byte order mark: valid JSON follows it
        head = head.removeprefix(BOM).lstrip()
        if not head:
            raise unknown_format(path, f"empty file ({os.path.getsize(path)} bytes)")
        try:
            if head.startswith(b"["):
                return "list", None, next(ijson.items(f, "item", use_float=True), None)
            if head.startswith(b"{"):
                key, value = next(ijson.kvitems(f, "", use_float=True), (None, None))
                return "dict", key, value
        except ijson.JSONError as err:
            raise unknown_format(path, f"invalid JSON ({err})") from err
    raise unknown_format(path, "not a JSON object or list")


def detect_format(path: str) -> str:
    """Name of the format of `path` (a key of `FORMAT_SHAPES`), from its first record; `UnknownFormatError` if none."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    kind, _, first = _first_record(path)
    if first is None:
        raise unknown_format(path, "an empty JSON list ([]): no records" if kind == "list" else
                             "an empty JSON object ({}): no records")  # fmt: skip
    if kind == "dict":
        try:
            return detect_schema(path)
        except HncFormatError:
            pass
        if isinstance(first, dict) and {"filename", "caption", "negative_caption"} <= first.keys():
            return SUGARCREPE
    elif isinstance(first, dict):
        keys = first.keys()
        if {"image_path", "true_caption", "false_caption"} <= keys:
            return ARO_ATTRIBUTION if "attributes" in keys and "relation_name" not in keys else ARO_RELATION
        if {"image", "text", "neg_text"} <= keys:
            return STRUCTURE_CLIP
        if {"image", "caption"} <= keys:
            return COCO_KARPATHY
    shown = json.dumps(first)[:200] if not isinstance(first, dict) else sorted(first)
    raise unknown_format(path, f"first record not recognised ({shown})")


# ---------------------------------------------------------------------------------------------------------------------
# Pairs: path -> the benchmark registry's reader for its layout -> pair records
# ---------------------------------------------------------------------------------------------------------------------


def _clean(text) -> str:
    return text.strip() if isinstance(text, str) else ""


def _as_pair(item) -> dict:
    """A 2-way `ChoiceItem` as a pair record (`hnc_clip.data.hnc`'s columns plus `bbox`)."""
    return {
        "pair_id": item.meta.get("pair_id", item.item_id),
        "image_id": item.meta.get("image_id", os.path.splitext(os.path.basename(item.image.file))[0]),
        "image_file": item.image.file,
        "positive": _clean(item.captions[item.correct]),
        "negative": _clean(item.captions[1 - item.correct]),
        "type": item.type,
        "bbox": item.image.bbox,
    }


def _load_json(path: str, expected: type, fmt: str):
    try:
        return read_json(path, expected)
    except DataFileError as err:
        raise DataFileError(f"{err} (format {fmt}: {FORMAT_SHAPES[fmt]})") from None


def read_layout(path: str, fmt: str, max_items: int | None = None) -> BenchmarkData:
    """The items of `path` read by the registry's reader for layout `fmt` (`FILE_LAYOUTS`); a file that is not
    that layout's shape raises `DataFileError` naming the layout and its shape."""
    if fmt == COCO_KARPATHY:
        raise unknown_format(path, f"{COCO_KARPATHY} has no negative captions, so it only works with --task retrieval")
    try:
        if fmt in (TEST_SCHEMA, TRAIN_SCHEMA):  # the train file is 8 GB: stream only the pairs --max_pairs needs
            return FILE_LAYOUTS[fmt](path, max_items=max_items)
        return FILE_LAYOUTS[fmt](path)
    except DataFileError as err:
        raise DataFileError(f"{err} (format {fmt}: {FORMAT_SHAPES[fmt]})") from None


def _check_format(data_format: str | None, path: str) -> str:
    fmt = data_format or detect_format(path)
    if fmt not in FORMAT_SHAPES:
        raise unknown_format(path, f"unknown --data_format {fmt!r}")
    return fmt


def load_pairs(
    paths: str | Iterable[str],
    data_format: str | None = None,
    skips: Counter | None = None,
    max_pairs: int | None = None,
) -> list[dict]:
    """Pair records from one or more files (e.g. all SugarCrepe subsets), each detected unless `data_format` is given.

    Records with missing or empty captions are skipped and counted in `skips` (reason -> count). Raises
    `UnknownFormatError` for unrecognised files and `ValueError` when nothing usable was read.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    skips = skips if skips is not None else Counter()
    pairs: list[dict] = []
    for path in paths:
        limit = None if max_pairs is None else max_pairs - len(pairs)
        data = read_layout(path, _check_format(data_format, path), limit)
        skips.update(data.parse_skips)
        for rec in map(_as_pair, data.items):
            if not rec["positive"] or not rec["negative"]:
                skips["empty_caption"] += 1
                continue
            pairs.append(rec)
            if max_pairs is not None and len(pairs) >= max_pairs:
                return pairs
    if not pairs:
        raise ValueError(f"no positive/negative pairs in {paths} (skipped: {dict(skips) or 'none'})")
    return pairs


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval: path -> images, each with all its captions
# ---------------------------------------------------------------------------------------------------------------------


def _karpathy_captions(path: str) -> Iterator[tuple[ImageRef, str]]:
    """(image, caption) per caption entry of a Karpathy file, test (a list per image) or train (one per record)."""
    data = read_karpathy(path, _load_json(path, list, COCO_KARPATHY), strict=False)
    if data.parse_skips:
        logger.warning(f"{path}: {data.parse_skips['record_missing_keys']} records without 'image' and 'caption' "
                       "skipped")  # fmt: skip
    return ((item.image, caption) for item in data.items for caption in item.captions)


def load_image_captions(
    paths: str | Iterable[str], data_format: str | None = None, max_images: int | None = None
) -> list[ImageCaptions]:
    """Images with all their captions, for retrieval.

    COCO Karpathy files list captions per image (train-style files with one caption per record are grouped too);
    every caption entry is kept, duplicates included, as CLIP_benchmark does. Pair formats contribute each image's
    *unique positives* (HNC repeats a positive once per hard negative).
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    by_image: dict[ImageRef, list[str]] = {}
    for path in paths:
        fmt = _check_format(data_format, path)
        if fmt == COCO_KARPATHY:
            records: Iterable[tuple[ImageRef, str]] = _karpathy_captions(path)
            unique = False  # CLIP_benchmark keeps every caption entry, duplicates included
        else:
            records = ((ImageRef(p["image_file"], p["bbox"]), p["positive"]) for p in load_pairs(path, fmt))
            unique = True  # a pair file repeats each positive once per hard negative: those are not captions
        for ref, caption in records:
            if isinstance(caption, str) and caption.strip():
                captions = by_image.setdefault(ref, [])
                if not (unique and caption.strip() in captions):
                    captions.append(caption.strip())
    items = [ImageCaptions(ref, list(caps)) for ref, caps in by_image.items() if caps]
    if max_images is not None:
        items = items[:max_images]
    if not items:
        raise ValueError(f"no images with captions in {paths}")
    return items
