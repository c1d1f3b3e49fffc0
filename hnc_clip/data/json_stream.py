"""Streaming reader for a JSON file whose top level is one large object (HNC's 8 GB train file).

Nothing here calls `json.load` on a whole file: `iter_members` reads it in 4 MiB chunks and parses one top-level
member (one image entry, ~60 KB) at a time with the standard library's C decoder (`json.JSONDecoder.raw_decode`);
memory stays flat in file size. That is ~3× faster than an event-level streaming parser (ijson), which builds the
same objects one event at a time (`bench/convert_hnc.py`). `MemberReader` also knows each member's byte offset and
can start in the middle of a file, so several processes can read one file (`hnc_clip/data/arrow_cache.py`).
"""

from __future__ import annotations

import codecs
import gc
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

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


# A `\uD800`-`\uDFFF` escape: half of a UTF-16 surrogate pair. Valid JSON, but alone it is no Unicode text.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _has_lone_surrogate(obj) -> bool:
    """Does any string (key or value) in a decoded JSON value hold a lone surrogate (unencodable as UTF-8)?"""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(obj, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return any(_has_lone_surrogate(v) for v in obj)
    return False


def _lone_surrogate_at(buf: str, start: int, end: int) -> int:
    """Index of the first surrogate escape in `buf[start:end]` that is not half of a high+low pair (else `start`)."""
    matches = list(_SURROGATE_ESCAPE.finditer(buf, start, end))
    i = 0
    while i < len(matches):
        high = int(matches[i][0][2:], 16) < 0xDC00
        paired = i + 1 < len(matches) and matches[i + 1].start() == matches[i].end()
        if high and paired and int(matches[i + 1][0][2:], 16) >= 0xDC00:
            i += 2
            continue
        return matches[i].start()
    return start


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
    member's byte position is known (needed to split a file between processes, `hnc_clip/data/arrow_cache.py`).
    """

    def __init__(
        self, path: str, f, chunk_bytes: int = CHUNK_BYTES, max_entry_bytes: int = MAX_ENTRY_BYTES, expected: str = ""
    ):
        self.path, self.f, self.chunk_bytes, self.max_entry_bytes = path, f, chunk_bytes, max_entry_bytes
        self.expected = f" Expected one of: {expected}" if expected else ""  # what the file should look like
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        start = f.tell()
        if start == 0 and f.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8:  # written by some Windows tools
            start = len(codecs.BOM_UTF8)
        self._start_at(start)

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
                f"{self.path}: empty JSON object or not a JSON object.{self.expected}"
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
                    if _SURROGATE_ESCAPE.search(self.buf, self.pos, end) and _has_lone_surrogate((key, value)):
                        raise self.error(
                            "a lone UTF-16 surrogate escape (\\uD800-\\uDFFF without its pair): not Unicode text",
                            _lone_surrogate_at(self.buf, self.pos, end),
                        )
                    self.pos = end
                    return key, value
            except HncFormatError:
                raise
            except json.JSONDecodeError as err:
                if self.eof or not _maybe_cut(err):  # more text cannot help: the file is wrong here
                    raise self.error(err.msg, err.pos) from None
            except RecursionError:  # the C decoder's depth limit (~1,000 levels); HNC entries nest 4
                raise self.error("nested too deeply for an HNC entry") from None
            except ValueError as err:  # not a syntax error: e.g. an integer of more than 4,300 digits
                raise self.error(str(err)) from None
            if len(self.buf) - self.pos > self.max_entry_bytes:
                raise self.error(
                    f"one top-level entry is larger than {self.max_entry_bytes >> 20} MiB: not an HNC file, whose "
                    f"entries are single images.{self.expected}"
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
        process reading the previous range stopped exactly here (`hnc_clip/data/arrow_cache.py` does). False: none
        found.
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
            except (RecursionError, ValueError):  # not a member we can read: the sequential check will say why
                pass
            search = hit.end()
        return False


def iter_members(
    path: str, chunk_bytes: int = CHUNK_BYTES, max_entry_bytes: int = MAX_ENTRY_BYTES, expected: str = ""
):
    """Yield `(key, value)` for each member of the file's top-level JSON object, reading it chunk by chunk."""
    with _open(path) as f:
        reader = MemberReader(path, f, chunk_bytes, max_entry_bytes, expected)
        if reader.open_object():
            yield from reader.members()
