"""HNC JSON → Arrow files, in one process or in several reading byte ranges of the same file.

A range reader cannot know for sure where a top-level member starts in the middle of a JSON file (a nested
member or a caption string can look the same), so it guesses (`MemberReader.seek`) and the guess is *checked*:
the reader of the previous range goes on past its end to the first member it did not read and reports that
member's byte offset; the two must be equal. If any check fails, the file is converted again in one process.
So the parallel result is the sequential one, or it is not used (`tests/test_convert.py` builds files made to
fool the guess).

The output is one Arrow file per range (`datasets.arrow_writer.ArrowWriter`, written in column batches: no Python
dict per pair), read back with `datasets.Dataset.from_file`, memory-mapped.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from datasets.arrow_writer import ArrowWriter

from .hnc_json import LOOKS_LIKE_ENTRY, PAIR_COLUMNS, HncFormatError, MemberReader, _open, pair_batches, paused_gc

logger = logging.getLogger(__name__)

# Below this many bytes per process, starting processes costs more than it saves.
MIN_BYTES_PER_PROC = 64 << 20
# The key's opening quote may be this far after the `,` that a range reader searches for.
SEEK_BACK = 64


@dataclass
class RangeResult:
    shard: str | None  # Arrow file written (None: no pairs in this range)
    rows: int = 0
    skips: dict = field(default_factory=dict)
    first: int | None = None  # byte offset of the first member read (None: none found from the range start)
    next: int | None = None  # byte offset of the first member after the range (None: the object ended)
    error: HncFormatError | None = None


def default_num_proc(path: str) -> int:
    return max(1, min(os.cpu_count() or 1, 16, os.path.getsize(path) // MIN_BYTES_PER_PROC))


def convert_range(path: str, schema: str, start: int, stop: int | None, shard: str, features) -> RangeResult:
    """Pairs of the members starting in [start, stop) (bytes; `stop` None: to the end) → Arrow file `shard`."""
    result = RangeResult(shard=None)
    skips: Counter = Counter()
    writer = None
    try:
        with paused_gc(), _open(path) as f:
            reader = MemberReader(path, f)
            if start == 0:
                found = reader.open_object()
            else:
                found = reader.seek(max(0, start - SEEK_BACK), LOOKS_LIKE_ENTRY[schema])
                while found and reader.byte_at(reader.pos) < start:  # a member before the range: not ours
                    reader.read_member()
                    found = not reader.done
            if not found:
                return result
            result.first = reader.byte_at(reader.pos)
            for cols in pair_batches(reader.members(stop_byte=stop), schema, skips):
                if writer is None:
                    writer = ArrowWriter(features=features, path=shard)
                writer.write_batch(cols)
                result.rows += len(cols[PAIR_COLUMNS[0]])
            if writer is not None:
                writer.finalize()
                writer, result.shard = None, shard
            result.next = None if reader.done else reader.byte_at(reader.pos)
    except HncFormatError as err:
        result.error = err
    finally:
        if writer is not None:  # stopped by an error: close the partial file (its directory is discarded)
            writer.close()
    result.skips = dict(skips)
    return result


def convert(path: str, schema: str, out_dir: str, features, num_proc: int | None = None) -> tuple[list[str], dict]:
    """Convert `path` into Arrow files under `out_dir`; returns (files in order, skip counts)."""
    num_proc = num_proc or default_num_proc(path)
    if num_proc > 1:
        results = _convert_parallel(path, schema, out_dir, features, num_proc)
        if results is not None:
            return _finish(results)
    return _finish([convert_range(path, schema, 0, None, os.path.join(out_dir, "pairs-00000.arrow"), features)])


def _finish(results: list[RangeResult]) -> tuple[list[str], dict]:
    for r in results:
        if r.error is not None:
            raise r.error
    skips: Counter = Counter()
    for r in results:
        skips.update(r.skips)
    return [r.shard for r in results if r.shard], dict(skips)


def _convert_parallel(path, schema, out_dir, features, num_proc) -> list[RangeResult] | None:
    size = os.path.getsize(path)
    bounds = [size * i // num_proc for i in range(num_proc)] + [None]
    # fork (as `datasets.map(num_proc=...)`): spawn would re-run an unguarded calling script in every child. The
    # children run only the JSON decoder and pyarrow, not torch, so threads the parent holds do not matter.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context(method)) as pool:
        futures = [
            pool.submit(
                convert_range, path, schema, bounds[i], bounds[i + 1],
                os.path.join(out_dir, f"pairs-{i:05d}.arrow"), features,
            )
            for i in range(num_proc)
        ]
        results = [f.result() for f in futures]
    for i, r in enumerate(results):
        if i and results[i - 1].next != r.first:  # this range did not start where the previous one stopped
            logger.warning(
                f"{path}: parallel conversion could not split the file cleanly at byte {bounds[i]:,} "
                f"(member {results[i - 1].next} vs {r.first}); converting it in one process"
            )
            _remove_shards(results)
            return None
        if r.error is not None:  # this range started at a true member: its error is the file's
            break
    logger.info(f"{path}: converted in {num_proc} processes")
    return results


def _remove_shards(results: list[RangeResult]) -> None:
    for r in results:
        if r.shard and os.path.exists(r.shard):
            os.remove(r.shard)
