"""Streaming readers for the two HNC JSON schemas.

The real train file is 8 GB (67,807 images, 8.2 M positive/negative pairs), so nothing here calls
`json.load` on a whole file: `iter_members` reads it in 4 MiB chunks and parses one top-level entry (one image,
~60 KB) at a time with the standard library's C decoder (`json.JSONDecoder.raw_decode`); memory stays flat in
file size. That is ~3× faster than an event-level streaming parser (ijson), which builds the same objects
one event at a time (`bench/convert_hnc.py`).

Schemas (see `shared/data/README.md`):

- **train/val**: `{image_id: {"captions": {caption_id: {caption, label, type, cpt_p_id, ...}}}}`. `label` 1 is a
  positive, 0 a hard negative; a negative's `cpt_p_id` is the *integer* id of its positive, whose key is a *string*.
- **test**: `{"<image>.jpg": {"0": {caption, label, type, replaced}, "1": {...}, ...}}`; the positive at index 2k
  is paired with the negative at index 2k+1.

Both become the same flat pair records (`PAIR_COLUMNS`), produced column-wise in batches (`iter_pair_batches`)
so the Arrow writer takes them without a Python dict per pair.
"""

from __future__ import annotations

import codecs
import gc
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

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

CHUNK_BYTES = 4 << 20
# One image entry of the real file is ~60 KB. A top-level entry this large means the file is not HNC-shaped
# (e.g. everything nested under one key), and reading on would load the whole file.
MAX_ENTRY_BYTES = 256 << 20


class HncFormatError(ValueError):
    """A file is not valid JSON, or is valid JSON in neither HNC schema."""


@contextmanager
def paused_gc():
    """Pause the cyclic garbage collector while decoding many entries.

    Decoded entries hold no reference cycles (refcounting frees them), but they are millions of new containers,
    and each batch of them triggers a GC scan of every object the process holds (all of `datasets`, torch, ...):
    pausing it makes decoding ~1.5× faster in a process that imported those (`bench/convert_hnc.py`).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _open(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"HNC file not found: {path}")
    return open(path, "rb")


_WS = " \t\n\r"
_DECODER = json.JSONDecoder()
# A member start inside the object: `,` then the key string then `:` then an object. Used only to find where to
# start reading in the middle of a file; every hit is checked by parsing (see `MemberReader.seek`).
_MEMBER_START = re.compile(r',[ \t\n\r]*(")')


def _skip_ws(buf: str, pos: int) -> int:
    while pos < len(buf) and buf[pos] in _WS:
        pos += 1
    return pos


def _maybe_cut(err: json.JSONDecodeError) -> bool:
    """Could this decode error be the window's end, not the file? Text cut mid-value fails at (or within a
    token of) the end: `"Expecting ',' delimiter"` at the end, `tru|`, `1.5e|`, `\\u12|`; or leaves a string
    open, which in a complete file only the end of the file can do."""
    return err.pos >= len(err.doc) - 16 or err.msg.startswith("Unterminated string")


def _parse_member(buf: str, pos: int) -> tuple[str, object, int]:
    """`"key": value` at `pos` → (key, value, index after the value); `json.JSONDecodeError` if incomplete/invalid."""
    key, end = _DECODER.raw_decode(buf, pos)
    if not isinstance(key, str):
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", buf, pos)
    end = _skip_ws(buf, end)
    if end >= len(buf) or buf[end] != ":":
        raise json.JSONDecodeError("Expecting ':' delimiter", buf, end)
    value, end = _DECODER.raw_decode(buf, _skip_ws(buf, end + 1))
    return key, value, end


class MemberReader:
    """Reads the members of a file's top-level JSON object one at a time, through a window of decoded text.

    Each value is parsed by the C decoder as a whole. A parse that fails where the window's end could have cut
    it (`_maybe_cut`) is retried with one more chunk; any other failure is the file's, raised as `HncFormatError`
    with its byte offset. The window keeps the byte offset of its start, so any
    member's byte position is known (needed to split a file between processes, `hnc_clip/convert.py`).
    """

    def __init__(self, path: str, f, chunk_bytes: int = CHUNK_BYTES, max_entry_bytes: int = MAX_ENTRY_BYTES):
        self.path, self.f, self.chunk_bytes, self.max_entry_bytes = path, f, chunk_bytes, max_entry_bytes
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self._start_at(f.tell())

    # -- the window ------------------------------------------------------------------------------------------
    def _start_at(self, byte: int) -> None:
        """An empty window whose next read is the file's byte `byte`."""
        self.f.seek(byte)
        self.utf8.reset()
        self.buf, self.start_byte, self.eof, self.ascii = "", byte, False, True
        self._mark = (0, byte)  # (index, byte offset) of a known point: byte_at() counts from it
        self.pos, self.done = 0, False

    def _more(self) -> bool:
        """Append the next chunk to the window; False at the end of the file."""
        if self.eof:
            return False
        raw = self.f.read(self.chunk_bytes)
        self.eof = not raw
        self.ascii = self.ascii and raw.isascii()
        try:
            self.buf += self.utf8.decode(raw, final=self.eof)
        except UnicodeDecodeError as err:
            raise self.error(f"not UTF-8: {err.reason}", len(self.buf)) from None
        return bool(raw)

    def _drop(self) -> None:
        """Forget the window up to `self.pos` (already parsed)."""
        self.start_byte = self.byte_at(self.pos)
        self.buf, self.pos, self._mark = self.buf[self.pos :], 0, (0, self.start_byte)
        self.ascii = self.buf.isascii()

    def byte_at(self, pos: int) -> int:
        """Byte offset in the file of the window's character `pos` (O(1) for ASCII text, amortised O(n) else)."""
        if self.ascii:
            return self.start_byte + pos
        index, byte = self._mark
        if pos < index:
            index, byte = 0, self.start_byte
        byte += len(self.buf[index:pos].encode("utf-8"))
        self._mark = (pos, byte)
        return byte

    def _skip_ws(self) -> None:
        while True:
            self.pos = _skip_ws(self.buf, self.pos)
            if self.pos < len(self.buf) or not self._more():
                return

    def error(self, detail: str, pos: int | None = None) -> HncFormatError:
        where = self.byte_at(self.pos if pos is None else pos)
        return HncFormatError(f"{self.path}: invalid JSON near byte {where:,} ({' '.join(detail.split())})")

    # -- members ---------------------------------------------------------------------------------------------
    def open_object(self) -> bool:
        """At the start of the file: consume `{`; False if the object is empty."""
        self._skip_ws()
        if self.pos >= len(self.buf) or self.buf[self.pos] != "{":
            raise HncFormatError(
                f"{self.path}: empty JSON object or not a JSON object. Expected one of: {EXPECTED_SHAPES}"
            )
        self.pos += 1
        self._skip_ws()
        if self.pos < len(self.buf) and self.buf[self.pos] == "}":
            self._close()
            return False
        return True

    def _close(self) -> None:
        self.pos += 1
        self._skip_ws()
        if self.pos < len(self.buf):
            raise self.error("extra data after the top-level object")
        self.done = True

    def _member(self) -> tuple[str, object]:
        """Parse the member at `self.pos`, reading more of the file until it is complete."""
        while True:
            try:
                key, value, end = _parse_member(self.buf, self.pos)
                # Objects, lists and strings end with their closing character, so they are complete. A number cut
                # by the window parses as its head and stops at (or 1-2 characters before: `1.|`, `1e+|`) the
                # window's end: read on before trusting one there.
                if self.eof or isinstance(value, (dict, list, str)) or len(self.buf) - end > 8:
                    self.pos = end
                    return key, value
            except json.JSONDecodeError as err:
                if self.eof or not _maybe_cut(err):  # more text cannot help: the file is wrong here
                    raise self.error(err.msg, err.pos) from None
            if len(self.buf) - self.pos > self.max_entry_bytes:
                raise self.error(
                    f"one top-level entry is larger than {self.max_entry_bytes >> 20} MiB: not an HNC file, whose "
                    f"entries are single images. Expected one of: {EXPECTED_SHAPES}"
                )
            if self.pos:
                self._drop()
            self._more()

    def members(self, stop_byte: int | None = None) -> Iterator[tuple[str, object]]:
        """Yield `(key, value)` from the current member on, to the end of the object, or up to the first member
        that starts at or after `stop_byte` (then `self.pos` is that member's start and `self.done` is False)."""
        while not self.done:
            if stop_byte is not None and self.byte_at(self.pos) >= stop_byte:
                return
            yield self.read_member()

    def read_member(self) -> tuple[str, object]:
        """Parse the member at `self.pos` and move to the next one (or to the end: `self.done`)."""
        member = self._member()
        self._skip_ws()
        if self.pos >= len(self.buf):
            raise self.error("the top-level object is not closed (file cut short?)")
        if self.buf[self.pos] == "}":
            self._close()
            return member
        if self.buf[self.pos] != ",":
            raise self.error(f"expecting ',' or '}}' between top-level entries, got {self.buf[self.pos]!r}")
        self.pos += 1
        self._skip_ws()
        if self.pos >= len(self.buf) * 3 // 4:  # keep the window small: drop what has been parsed
            self._drop()
        return member

    def seek(self, byte: int, looks_like_entry) -> bool:
        """Position at the first top-level member that starts at or after `byte` (for reading a file's middle).

        A member start cannot be told from a nested one by looking, so each `, "key":` hit is tried: its value
        must be an image entry (`looks_like_entry`) followed by `,` or `}`. Callers must still check that the
        process reading the previous range stopped exactly here (`hnc_clip/convert.py` does). False: none found.
        """
        self.f.seek(byte)
        lead = self.f.read(4)  # we may land inside a multi-byte character: skip its continuation bytes
        self._start_at(byte + next((i for i, b in enumerate(lead) if b & 0xC0 != 0x80), len(lead)))
        self._more()
        search = 0
        while len(self.buf) <= self.max_entry_bytes + self.chunk_bytes:
            hit = _MEMBER_START.search(self.buf, search)
            if hit is None:
                if not self._more():
                    return False
                continue
            start = hit.start(1)
            try:
                key, value, end = _parse_member(self.buf, start)
                end = _skip_ws(self.buf, end)
                if end >= len(self.buf) and self._more():  # need the next character
                    continue
                if looks_like_entry(value) and end < len(self.buf) and self.buf[end] in ",}":
                    self.pos = start
                    return True
            except json.JSONDecodeError as err:
                # Most failing hits are just not members (`, "next to", ...` in a list): move on. One that may
                # have been cut by the window's end is retried with more text.
                if _maybe_cut(err) and self._more():
                    continue
            search = hit.end()
        return False


def iter_members(path: str, chunk_bytes: int = CHUNK_BYTES, max_entry_bytes: int = MAX_ENTRY_BYTES):
    """Yield `(key, value)` for each member of the file's top-level JSON object, reading it chunk by chunk."""
    with _open(path) as f:
        reader = MemberReader(path, f, chunk_bytes, max_entry_bytes)
        if reader.open_object():
            yield from reader.members()


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
    first = next(iter_members(path), None)
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
    captions = entry.get("captions") or {}
    positives = {str(cid): c for cid, c in captions.items() if isinstance(c, dict) and c.get("label") == 1}
    paired: set[str] = set()
    for cid, cap in captions.items():
        if not isinstance(cap, dict) or cap.get("label") != 0:
            continue
        pos_id = cap.get("cpt_p_id")
        pos = positives.get(str(pos_id)) if pos_id is not None else None
        if pos is None:
            skips["negative_without_positive"] += 1
            continue
        if _add_pair(cols, image, pos_id, cid, pos, cap, cap.get("type") or pos.get("type"), skips):
            paired.add(str(pos_id))
    if unpaired := len(set(positives) - paired):
        skips["positive_without_negative"] += unpaired


def _test_pairs(cols: dict[str, list], image: tuple[str, str], entry: dict, skips: Counter) -> None:
    try:
        ordered = sorted(entry.items(), key=lambda kv: int(kv[0]))
    except ValueError:
        skips["test_entry_key_not_an_index"] += 1
        return
    for i in range(0, len(ordered) - 1, 2):
        (pid, pos), (nid, neg) = ordered[i], ordered[i + 1]
        if not isinstance(pos, dict) or not isinstance(neg, dict) or pos.get("label") != 1 or neg.get("label") != 0:
            skips["test_pair_labels_not_1_0"] += 1
            continue
        _add_pair(cols, image, pid, nid, pos, neg, pos.get("type") or neg.get("type"), skips)
    if len(ordered) % 2:
        skips["test_caption_without_partner"] += 1


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
    yield from pair_batches(iter_members(path), schema, skips if skips is not None else Counter(), batch_size)


def iter_hnc_pairs(path: str, schema: str | None = None, skips: Counter | None = None) -> Iterator[dict]:
    """`iter_pair_batches`, one pair record (`PAIR_COLUMNS` → value) at a time."""
    for cols in iter_pair_batches(path, schema, skips):
        for row in zip(*(cols[name] for name in PAIR_COLUMNS)):
            yield dict(zip(PAIR_COLUMNS, row))
