"""Sharded, resumable JSONL output: what `hnc-clip-negatives` writes while it runs, and how a killed run resumes.

The parts folder (`<output_file>.parts/` unless named) holds

    settings.json       what the lines were made with (model, prompts, generation and filter flags, input file)
    part-<rank>.jsonl   each process's lines, one per input row: {"row": n, "record": {...}, ...}

A process appends the lines of a batch in one write and `fsync`s them before the next batch, so a kill leaves
complete lines and at most one partial last line. A rerun reads every part (whichever process wrote it: the number
of processes may change), takes the rows of complete lines as done, cuts its own part's partial line, and makes
only the rows not done. At the end the rows are merged in input order into the output file (written beside it, then
renamed into place), each row exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator

from ..errors import RunAbortedError
from ..output_dir import write_atomic

logger = logging.getLogger(__name__)

SETTINGS = "settings.json"
PART = re.compile(r"^part-(\d+)\.jsonl$")


class PartsError(RunAbortedError):
    """A parts folder that cannot be resumed from: other settings, a corrupt line, rows missing at the merge."""


def part_path(parts_dir: str, rank: int) -> str:
    return os.path.join(parts_dir, f"part-{rank}.jsonl")


def part_files(parts_dir: str) -> list[str]:
    if not os.path.isdir(parts_dir):
        return []
    found = sorted((int(m.group(1)), name) for name in os.listdir(parts_dir) if (m := PART.match(name)))
    return [os.path.join(parts_dir, name) for _, name in found]


def read_part(path: str) -> Iterator[tuple[int, int, int]]:
    """(row, byte offset, byte length) of each complete line of a part file. A last line without its line end is
    a kill's partial write: passed over (its row is made again). A complete line that is not an entry is damage no
    kill makes: `PartsError`."""
    with open(path, "rb") as f:
        offset = 0
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                logger.warning(f"{path}: line {n} was cut short (a killed run): its row is made again")
                return
            try:
                row = json.loads(line)["row"]
            except (ValueError, KeyError, TypeError) as err:
                raise PartsError(
                    f"{path}: line {n} is not an entry of this tool ({err}): remove the parts folder, or rerun with "
                    "--overwrite_output"
                ) from err
            yield row, offset, len(line)
            offset += len(line)


def done_rows(parts_dir: str) -> set[int]:
    return {row for path in part_files(parts_dir) for row, _, _ in read_part(path)}


def check_settings(parts_dir: str, settings: dict) -> bool:
    """Whether `parts_dir` holds lines made with `settings` (True) or nothing yet (False); other settings:
    `PartsError` naming the differing ones."""
    path = os.path.join(parts_dir, SETTINGS)
    if not os.path.isfile(path):
        if part_files(parts_dir):
            raise PartsError(f"{parts_dir} holds part files but no {SETTINGS}: not resumable; --overwrite_output")
        return False
    with open(path) as f:
        before = json.load(f)
    differ = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if differ:
        detail = "; ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in differ[:6])
        raise PartsError(
            f"{parts_dir} holds a run made with other settings ({detail}): rerun with the same flags to resume it, or "
            "pass --overwrite_output to start over"
        )
    return True


def write_settings(parts_dir: str, settings: dict) -> None:
    os.makedirs(parts_dir, exist_ok=True)
    write_atomic(os.path.join(parts_dir, SETTINGS), json.dumps(settings, indent=1, sort_keys=True) + "\n")


class PartWriter:
    """Appends complete lines to `part-<rank>.jsonl`, `fsync`ed per call; a partial last line is cut on open."""

    def __init__(self, parts_dir: str, rank: int):
        self.path = part_path(parts_dir, rank)
        os.makedirs(parts_dir, exist_ok=True)
        self._cut_partial_line()
        self.file = open(self.path, "ab")

    def _cut_partial_line(self) -> None:
        if not os.path.isfile(self.path):
            return
        end = sum(length for _, _, length in read_part(self.path))
        if end < os.path.getsize(self.path):
            os.truncate(self.path, end)

    def append(self, entries: list[dict]) -> None:
        if not entries:
            return
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
        self.file.write(data)
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def merged_entries(parts_dir: str, n_rows: int) -> Iterator[dict]:
    """Every part's entries, in row order 0..n_rows-1, each row once. A row no part holds: `PartsError` (a process
    that failed, or parts of another input). A row held twice (two runs raced on the folder) is taken once."""
    index: dict[int, tuple[str, int, int]] = {}
    twice = 0
    for path in part_files(parts_dir):
        for row, offset, length in read_part(path):
            if row in index:
                twice += 1
                continue
            index[row] = (path, offset, length)
    if twice:
        logger.warning(f"{parts_dir}: {twice} rows written twice (another run on this folder?): each taken once")
    missing = [r for r in range(n_rows) if r not in index]
    if missing:
        raise PartsError(
            f"{parts_dir}: {len(missing)} of {n_rows} rows are in no part file (first: {missing[:5]}): a process "
            "stopped early; rerun the same command to make them"
        )
    files = {}
    try:
        for row in range(n_rows):
            path, offset, length = index[row]
            f = files.get(path) or files.setdefault(path, open(path, "rb"))
            f.seek(offset)
            yield json.loads(f.read(length))
    finally:
        for f in files.values():
            f.close()


def write_jsonl_atomic(path: str, records: Iterator[dict]) -> int:
    """Write `records` as JSONL to `path` by way of `<path>.tmp` and a rename: a kill leaves no half table."""
    tmp = f"{path}.tmp"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n
