"""A generic hard-negative table → the same pair records as HNC, cached as Arrow; hard-image negatives as pairs.

A table has one row per (image, caption) with one or more hard-negative captions, and optionally the rows whose
images are hard negatives for it. Its columns are named by flags, as HF `run_clip.py` names its own:

    --image_column image_path          file name under --image_dir
    --caption_column caption           the positive caption
    --negative_caption_column negative_captions   a string, or a list of strings (K per row)
    --negative_image_column            optional: a list of row numbers (0-based, file order), as NegCLIP's neg_image

Sources, by what `path` is: `.jsonl` (one JSON object a line), `.csv` / `.tsv` (comma / tab separated; a list cell
may be a Python list literal, as NegCLIP's COCO files store them, read with `ast.literal_eval`), `.parquet`, a
folder `datasets.load_dataset` reads, or else a Hub dataset name (`load_dataset(name, config, split=...)`). NegCLIP's
COCO TSV (columns `filepath`, `title`, `neg_caption`, `neg_image`) reads as it is:

    --image_column filepath --caption_column title --negative_caption_column neg_caption \\
    --negative_image_column neg_image

Files are read row by row (never whole into memory) into Arrow files under a cache directory named by a
fingerprint of the file (the HNC cache's: path, size, mtime, ctime and a hash of sampled content blocks,
`hnc_clip.data.arrow_cache.fingerprint`) and of the column flags, committed by a rename as the HNC cache
(`hnc_clip.data.arrow_cache`). Bad input, as for HNC: a file that is not the format its name says, a configured
column that is missing (the available ones are listed) or a cell of the wrong type raise `TableFormatError` naming
the file and the row; rows that cannot make a pair (empty caption, no negative, fewer negatives than
`--negatives_per_row`) are skipped and counted by reason in one summary line.

Hard-image negatives (`HardImagePairs`): each time a row is read, one of its listed rows is drawn (NegCLIP's
`random.choice`) and rides along as a further pair of the batch, with its own image, caption and negatives, so
the loss sees NegCLIP's images [I; I'] and texts [T; T'; H; H'].
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator

import datasets
from datasets.arrow_writer import ArrowWriter

from .arrow_cache import build_cache_dir, fingerprint, report_skips

logger = logging.getLogger(__name__)

# Columns a table adds to the HNC pair records (`PAIR_COLUMNS`; there `negative` is the first negative).
TABLE_COLUMNS = ("negatives", "source_row", "negative_rows")
FEATURES = datasets.Features(
    {
        **{name: datasets.Value("string") for name in ("pair_id", "image_id", "image_file", "positive", "negative")},
        "type": datasets.Value("string"),
        "negatives": datasets.Sequence(datasets.Value("string")),
        "source_row": datasets.Value("int64"),  # the row's number in the source, what negative_rows refer to
        "negative_rows": datasets.Sequence(datasets.Value("int64")),
    }
)
TABLE_VERSION = 1
BATCH_ROWS = 10_000


class TableFormatError(ValueError):
    """A table is not what its name says, lacks a configured column, or has a cell of the wrong type."""


def _csv_rows(path: str, delimiter: str) -> Iterator[tuple[str, dict]]:
    """Rows of a CSV/TSV file, each with exactly the header's number of cells: a caption with an unquoted comma
    would otherwise shift its row's cells into the next columns ("the cup, which is red" read as positive "the cup"
    and negative "which is red")."""
    name = "comma" if delimiter == "," else "tab"
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise TableFormatError(f"{path}: empty file (no header line)")
            for cells in reader:
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise TableFormatError(
                        f"{path}: line {reader.line_num}: {len(cells)} cells, the header has {len(header)} "
                        f"({', '.join(header)}); a cell holding a {name} must be quoted"
                    )
                yield f"line {reader.line_num}", dict(zip(header, cells))
        except csv.Error as err:
            raise TableFormatError(f"{path}: line {reader.line_num}: not valid CSV: {err}") from err


def _jsonl_rows(path: str) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                why = f"{err.msg} at column {err.colno}"
                raise TableFormatError(f"{path}: line {n}: not a JSON object ({why})") from err
            if not isinstance(row, dict):
                raise TableFormatError(f"{path}: line {n}: a JSON {type(row).__name__}, expected an object")
            yield f"line {n}", row


def _parquet_rows(path: str) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
        raise TableFormatError(f"{path}: not a Parquet file: {err}") from err
    n = 0
    for batch in file.iter_batches(batch_size=BATCH_ROWS):
        for row in batch.to_pylist():
            yield f"row {n}", row
            n += 1


def _dataset_rows(ds: datasets.Dataset) -> Iterator[tuple[str, dict]]:
    for n, row in enumerate(ds):
        yield f"row {n}", row


# File extension → reader of (position, row) pairs.
FILE_READERS = {
    ".jsonl": _jsonl_rows,
    ".csv": lambda path: _csv_rows(path, ","),
    ".tsv": lambda path: _csv_rows(path, "\t"),
    ".parquet": _parquet_rows,
}


def is_table(path: str) -> bool:
    """Whether `path` is read as a table: a table file, a dataset folder or a Hub name (`.json` is HNC's)."""
    ext = os.path.splitext(path)[1].lower()
    return ext in FILE_READERS or (ext != ".json" and not os.path.isfile(path))


def _list_cell(value, source: str, where: str, column: str) -> list:
    """A list cell: a list, a Python list literal (CSV), or one scalar (a one-element list); None: empty."""
    if value is None:
        return []
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, RecursionError, MemoryError) as err:  # the last two: "[[[[..." nested deep
            why = f"column {column!r} is not a list literal: {value[:80]!r}"
            raise TableFormatError(f"{source}: {where}: {why}") from err
    return list(value) if isinstance(value, (list, tuple)) else [value]


class _RowReader:
    """One source row → a pair record (or None, counted in `skips`)."""

    def __init__(self, source: str, columns: dict, negatives_per_row: int | None, skips: Counter,
                 plain: bool = False):  # fmt: skip
        self.source, self.columns, self.k, self.skips = source, columns, negatives_per_row, skips
        # `plain`: negatives are made from the captions later (--negatives_from_captions): a row needs none, and the
        # negative column may be absent
        self.plain = plain
        self.count: int | None = None  # with K unset: every row's number of negatives, set by the first row

    def _check_columns(self, row: dict, where: str) -> None:
        """Every row has the configured columns (JSONL and Hub rows need not share the first row's keys)."""
        optional = ("negative_caption_column",) if self.plain else ()
        missing = [f"--{flag} {name!r}" for flag, name in self.columns.items()
                   if name is not None and name not in row and flag not in optional]  # fmt: skip
        if missing:
            raise TableFormatError(
                f"{self.source}: {where}: {', '.join(missing)} not found; available columns: {sorted(row)}. "
                "Name them with --image_column, --caption_column, --negative_caption_column, --negative_image_column"
            )

    def _text(self, value, where: str, column: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise TableFormatError(f"{self.source}: {where}: column {column!r} holds {type(value).__name__}, not text")
        return value.strip()

    def __call__(self, n: int, where: str, row: dict) -> dict | None:
        self._check_columns(row, where)
        c = self.columns
        image = self._text(row[c["image_column"]], where, c["image_column"])
        positive = self._text(row[c["caption_column"]], where, c["caption_column"])
        raw = _list_cell(row.get(c["negative_caption_column"]), self.source, where, c["negative_caption_column"])
        negatives = [t for t in (self._text(v, where, c["negative_caption_column"]) for v in raw) if t]
        rows = []
        if c["negative_image_column"] is not None:
            for v in _list_cell(row[c["negative_image_column"]], self.source, where, c["negative_image_column"]):
                if isinstance(v, str) and v.strip().isdigit():  # one row number in a CSV cell
                    v = int(v)
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TableFormatError(
                        f"{self.source}: {where}: column {c['negative_image_column']!r} holds {v!r}; expected row "
                        "numbers (0-based, in file order), as NegCLIP's neg_image"
                    )
                rows.append(v)
        needed = (("empty_image", image), ("empty_caption", positive), ("no_negative", negatives or self.plain))
        for reason, present in needed:
            if not present:
                self.skips[reason] += 1
                return None
        if self.plain:
            pass  # the negatives a row brings are used first; the collator makes the rest (`NegativesFromCaptions`)
        elif self.k is not None and len(negatives) < self.k:
            self.skips["fewer_negatives_than_negatives_per_row"] += 1
            return None
        if self.k is None:
            self.count = self.count or len(negatives)
            if len(negatives) != self.count:
                raise TableFormatError(
                    f"{self.source}: {where}: {len(negatives)} hard negatives, earlier rows {self.count}: set "
                    "--negatives_per_row K to use K per row (drawn at random from rows with more)"
                )
        return {
            "pair_id": str(n), "image_id": image, "image_file": image, "positive": positive,
            "negative": negatives[0] if negatives else "", "type": "unknown", "negatives": negatives, "source_row": n,
            "negative_rows": rows,
        }  # fmt: skip


def read_table(
    path: str, config_name: str | None = None, split: str = "train"
) -> tuple[Iterator[tuple[str, dict]], str]:
    """(rows, fingerprint key) of a file, a dataset folder or a Hub dataset: rows as (position, row) pairs, the
    position as an error names it (`line 3`, `row 2`)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in FILE_READERS:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"table file not found: {path}")
        # The HNC cache's key (ctime and sampled content): a rewrite that keeps size and mtime is not served stale.
        return FILE_READERS[ext](path), fingerprint(path, f"table{ext}")
    # A folder or a Hub name: `datasets` caches it as Arrow already; its fingerprint names that version.
    ds = datasets.load_dataset(path, config_name, split=split)
    return _dataset_rows(ds), f"{path}|{config_name}|{split}|{ds._fingerprint}"


def _source(path: str, data_args, split: str) -> tuple[Iterator[tuple[str, dict]], str]:
    return read_table(path, data_args.dataset_config_name, split)


def _column_flags(data_args) -> dict:
    columns = {
        name: getattr(data_args, name)
        for name in ("image_column", "caption_column", "negative_caption_column", "negative_image_column")
    }
    columns["image_column"] = columns["image_column"] or "image_path"  # a table's default (--image_column unset)
    return columns


def load_table_pairs(path: str, data_args, split: str = "train", cache_dir: str | None = None) -> datasets.Dataset:
    """Read a hard-negative table into an Arrow-backed `Dataset` of pair records (`FEATURES`), cached."""
    columns = _column_flags(data_args)
    rows, key = _source(path, data_args, split)
    plain = bool(getattr(data_args, "negatives_from_captions", None))
    settings = json.dumps({**columns, "negatives_per_row": data_args.negatives_per_row, "plain": plain},
                          sort_keys=True)  # fmt: skip
    fingerprint = hashlib.sha256(f"table-v{TABLE_VERSION}|{key}|{settings}".encode()).hexdigest()[:32]
    root = os.path.join(cache_dir or datasets.config.HF_DATASETS_CACHE, "hnc_tables")
    final = os.path.join(root, fingerprint)

    def build(tmp: str) -> dict:
        out = os.path.join(tmp, "pairs.arrow")
        return {"skips": _convert(path, rows, columns, data_args.negatives_per_row, out, plain)}

    skips = build_cache_dir(root, final, build, overwrite=data_args.overwrite_cache)["skips"]
    ds = datasets.Dataset.from_file(os.path.join(final, "pairs.arrow"))
    report_skips(path, len(ds), skips)
    return ds


def _convert(
    source: str, rows: Iterator[tuple[str, dict]], columns: dict, k: int | None, out: str, plain: bool = False
) -> dict:
    skips: Counter = Counter()
    read = _RowReader(source, columns, k, skips, plain)
    writer = ArrowWriter(features=FEATURES, path=out)
    batch: list[dict] = []
    try:
        n = -1
        for n, (where, row) in enumerate(rows):
            pair = read(n, where, row)
            if pair is not None:
                batch.append(pair)
            if len(batch) >= BATCH_ROWS:
                writer.write_batch({name: [p[name] for p in batch] for name in FEATURES})
                batch = []
        if batch:
            writer.write_batch({name: [p[name] for p in batch] for name in FEATURES})
        if n < 0:
            raise TableFormatError(f"{source}: no rows")
        writer.finalize()
    finally:
        writer.close()
    return dict(skips)


# ---------------------------------------------------------------------------------------------------------------
# Hard-image negatives


class HardImagePairs:
    """A split (with its image transform) whose rows each bring one of their `negative_rows` as a further pair
    ("hard_image_pair", expanded by the collator), drawn with Python's `random` (seeded per DataLoader worker by
    torch, in the main process by `--seed`). A listed row that is not in the split (skipped, filtered, cut by
    `--max_*_samples`) is never drawn; a row with none left brings nothing."""

    def __init__(self, ds: datasets.Dataset):
        self.ds = ds
        source = ds.with_format("arrow")
        position = {row: i for i, row in enumerate(source["source_row"].to_pylist())}
        self.choices = [[position[r] for r in rows if r in position] for rows in source["negative_rows"].to_pylist()]

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        item = self.ds[i]
        if self.choices[i]:
            item["hard_image_pair"] = self.ds[random.choice(self.choices[i])]
        return item

    def with_format(self, *args, **kwargs):  # `ImageGroupedSampler` reads the image ids as Arrow
        return self.ds.with_format(*args, **kwargs)


def with_hard_image_pairs(ds: datasets.Dataset | None):
    """`HardImagePairs(ds)` when its rows list hard-negative images, else `ds` unchanged (HNC, plain tables)."""
    if ds is None or "negative_rows" not in ds.column_names:
        return ds
    if not any(ds.with_format("arrow")["negative_rows"].to_pylist()):
        return ds
    return HardImagePairs(ds)
