"""HNC JSON → Arrow files, cached by a fingerprint of the file; in one process or several reading byte ranges.

`load_hnc_pairs` streams a file into Arrow files under a cache directory named by a fingerprint of the file
(`fingerprint`: path, size, mtime, ctime and a hash of sampled blocks of its content), so an edited file is converted
again. The files are written into a temporary directory renamed into place when complete: an interrupted conversion
never leaves a cache that a later run trusts, and a conversion interrupted by SIGTERM (or any error) stops its worker
processes and removes its directory; one killed outright leaves a directory named after its process, removed by the
next conversion once that process is gone.

A range reader cannot know for sure where a top-level member starts in the middle of a JSON file (a nested
member or a caption string can look the same), so it guesses (`MemberReader.seek`) and the guess is *checked*:
the reader of the previous range goes on past its end to the first member it did not read and reports that
member's byte offset; the two must be equal. If any check fails, the file is converted again in one process.
So the parallel result is the sequential one, or it is not used (`tests/test_arrow_cache.py` builds files made
to fool the guess).

The output is one Arrow file per range (`datasets.arrow_writer.ArrowWriter`, written in column batches: no Python
dict per pair), read back with `datasets.Dataset.from_file`, memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import socket
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import datasets
from datasets.arrow_writer import ArrowWriter

from .hnc import EXPECTED_SHAPES, LOOKS_LIKE_ENTRY, PAIR_COLUMNS, detect_schema, pair_batches
from .json_stream import HncFormatError, MemberReader, _open, paused_gc
from .workers import die_with_parent

logger = logging.getLogger(__name__)

FEATURES = datasets.Features({name: datasets.Value("string") for name in PAIR_COLUMNS})
SKIPS_FILE = "hnc_skips.json"

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
            reader = MemberReader(path, f, expected=EXPECTED_SHAPES)
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
    # Pool's exit terminates its workers, on success and on any exception (SIGTERM's `Preempted` included): none is
    # left running a range nobody will read. `die_with_parent` covers a parent killed outright.
    context = multiprocessing.get_context(method)
    with context.Pool(num_proc, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        pending = [
            pool.apply_async(
                convert_range,
                (path, schema, bounds[i], bounds[i + 1], os.path.join(out_dir, f"pairs-{i:05d}.arrow"), features),
            )
            for i in range(num_proc)
        ]
        results = [p.get() for p in pending]
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


# Content sampled by the fingerprint: the first and last MiB and this many 64 KiB blocks spread between them.
SAMPLED_BLOCKS, BLOCK_BYTES, END_BYTES = 64, 64 << 10, 1 << 20


def content_sample_hash(path: str) -> str:
    """A hash of the file's first and last MiB and of `SAMPLED_BLOCKS` blocks evenly spread between (~6 MiB read,
    whatever the size: milliseconds, where hashing the 8 GB train file would take ~10 s per run)."""
    size = os.path.getsize(path)
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if size <= 2 * END_BYTES + SAMPLED_BLOCKS * BLOCK_BYTES:
            h.update(f.read())
        else:
            offsets = [0, *(END_BYTES + (size - 2 * END_BYTES) * i // SAMPLED_BLOCKS for i in range(SAMPLED_BLOCKS))]
            for offset, length in [(o, END_BYTES if o == 0 else BLOCK_BYTES) for o in offsets] + [
                (size - END_BYTES, END_BYTES)
            ]:
                f.seek(offset)
                h.update(f.read(length))
    return h.hexdigest()


def fingerprint(path: str, schema: str) -> str:
    """The cache key of a file: path, size, mtime, ctime and `content_sample_hash`.

    mtime alone is fooled by a same-size rewrite that restores it (`touch -d`, `os.utime`, `cp -p`, `rsync -t`).
    ctime cannot be restored: the kernel sets it to now on every write and on every change of mtime, so any rewrite
    changes the key. The sampled hash covers file systems that do not keep ctime (some FUSE and network mounts)
    for every change that touches a sampled block. A full hash would be exact but reads the whole file on every run
    before the cache can be used; ctime makes that unnecessary where it is kept. (A chmod or a hard link also
    changes ctime: one needless reconversion, never a stale cache.)"""
    st = os.stat(path)
    key = (
        f"hnc-v3|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|"
        f"{content_sample_hash(path)}|{schema}"
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


INCOMPLETE = ".incomplete-"


def _incomplete_dir(root: str, final: str) -> str:
    """A temporary conversion directory named `<fingerprint>.incomplete-<pid>@<host>@<random>` (host names hold no
    `@`), so that `_remove_stale` can tell whose it is."""
    return tempfile.mkdtemp(prefix=f"{os.path.basename(final)}{INCOMPLETE}{os.getpid()}@{socket.gethostname()}@",
                            dir=root)  # fmt: skip


def _remove_stale(root: str) -> None:
    """Remove the temporary directories of conversions killed outright on this host (their process is gone)."""
    for entry in os.listdir(root):
        pid, host, *_ = [*entry.partition(INCOMPLETE)[2].split("@"), "", ""]
        if host != socket.gethostname() or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
            logger.info(f"removed {entry}: left by a conversion that was killed (process {pid} is gone)")
        except PermissionError:  # alive, another user's
            pass


def build_cache_dir(root: str, final: str, build, overwrite: bool = False) -> dict:
    """The cache folder `final` (under `root`), built once: `build(tmp)` writes its files into a temporary folder
    and returns the record saved last as `SKIPS_FILE` (its presence means done); the folder is published by one
    rename (a concurrent process that got there first wins), and folders of killed builds are removed. Returns the
    record."""
    if overwrite and os.path.isdir(final):
        shutil.rmtree(final)
    if not os.path.isfile(os.path.join(final, SKIPS_FILE)):
        os.makedirs(root, exist_ok=True)
        _remove_stale(root)
        tmp = _incomplete_dir(root, final)
        try:
            record = build(tmp)
            with open(os.path.join(tmp, SKIPS_FILE), "w") as f:
                json.dump(record, f)
            try:
                os.rename(tmp, final)
            except OSError:  # another process (another rank) finished the same conversion first: use theirs
                if not os.path.isfile(os.path.join(final, SKIPS_FILE)):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(final, SKIPS_FILE)) as f:
        return json.load(f)


def load_hnc_pairs(
    path: str, cache_dir: str | None = None, overwrite_cache: bool = False, num_proc: int | None = None
) -> datasets.Dataset:
    """Stream an HNC file (either schema) into an Arrow-backed `Dataset` of pairs (`PAIR_COLUMNS`).

    `cache_dir`: where converted files live (default: the `datasets` cache). `num_proc`: conversion processes
    (default: one per 64 MiB of file, up to the CPU count).
    """
    schema = detect_schema(path)  # also: missing file / invalid JSON / unknown schema, with the file named
    root = os.path.join(cache_dir or datasets.config.HF_DATASETS_CACHE, "hnc_pairs")
    final = os.path.join(root, fingerprint(path, schema))

    def build(tmp: str) -> dict:
        files, skips = convert(path, schema, tmp, FEATURES, num_proc)
        return {"files": [os.path.basename(p) for p in files], "skips": skips}

    done = build_cache_dir(root, final, build, overwrite=overwrite_cache)
    files = [os.path.join(final, name) for name in done["files"]]
    parts = [datasets.Dataset.from_file(p) for p in files]
    ds = datasets.concatenate_datasets(parts) if parts else datasets.Dataset.from_dict(
        {name: [] for name in PAIR_COLUMNS}, features=FEATURES
    )
    report_skips(path, len(ds), done["skips"])
    return ds


def report_skips(what: str, kept: int, skips: dict[str, int]) -> None:
    """One summary line per split (counts by reason), never one warning per item."""
    total = sum(skips.values())
    if total:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(skips.items()))
        logger.warning(f"{what}: kept {kept:,} pairs, skipped {total:,} ({reasons})")
    else:
        logger.info(f"{what}: {kept:,} pairs, nothing skipped")
