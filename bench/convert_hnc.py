"""Benchmark: HNC JSON → Arrow conversion (`hnc_clip.data.load_hnc_pairs`): pairs/s and peak memory vs file size.

    python bench/convert_hnc.py                      # 1024 MB and 256 MB files, in a temp dir, deleted afterwards
    python bench/convert_hnc.py --size_mb 2          # smoke run (the tests)

Generates train-schema files (the schema of the 8 GB `hnc_clean_strict_train.json`) streaming, one image entry at
a time, with caption records shaped like the real ones (bboxes, ambiguity, replaced, cpt_p_id; ~480 bytes per
caption and 121 pairs per image, as the real file's 8 GB / 16.4 M captions). Each conversion runs in a fresh
subprocess, so its peak RSS (`VmHWM` from /proc/self/status, and `ru_maxrss`) is its own and includes importing
`datasets`; `baseline_rss_mb` is its RSS just before converting. Memory flat in file size means the peak at the
full size is no higher than at a quarter. Targets: >= 100k pairs/s and peak RSS <= 1.5 GB on a 2-core machine.

The generated files are read from the page cache (they were just written), so disk speed is not measured; a
real 8 GB file read at ~1 GB/s from an NVMe disk would not be the bottleneck at these rates.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from hnc_clip.data.hnc import HncPair, HncWriter, hnc_train_entry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OBJECTS = (
    "banana straw plate cup table chair man woman dog cat horse car tree building window door shirt hat sign bag "
    "bottle glass bowl pizza bike bus train boat bird fence grass sky cloud road street pole light lamp book"
).split()
ATTRIBUTES = "yellow red blue green white black brown small large wooden metal tall short open closed".split()
RELATIONS = ("to the left of", "to the right of", "on top of", "under", "behind", "in front of", "next to", "near")
TYPES = (
    "relation_subj relation_obj attribute_subg attribute_obj xor_logic_rel xor_logic_attr obj_count and_logic_rel "
    "and_logic_attr verify_rel verify_attr exist_obj exist_rel attribute_rel relation_rel obj_compare obj_rel"
).split()


def _fields(rng: random.Random, a: str, rel: str, b: str, negative: bool) -> dict:
    """The real file's further caption fields (see tests/data/README.md), ~480 bytes per caption in all."""
    bboxes = {
        str(rng.randrange(100_000, 4_000_000)): {
            "bbox": {
                "x": rng.randrange(500),
                "y": rng.randrange(375),
                "w": rng.randrange(1, 200),
                "h": rng.randrange(1, 200),
            },
            "name": name,
        }
        for name in rng.sample(OBJECTS, rng.choice((1, 2, 2, 2, 3, 4)))
    }
    return {
        "textual_label": b if negative else None,
        "bboxes": bboxes,
        "ambiguity": {"subgraph": [a, rel, b], "ambiguous": False, "count": 0},
        "noisy": False if not negative else None,
    }


def _pair(rng: random.Random) -> HncPair:
    caption_type = rng.choice(TYPES)
    texts, fields = [], []
    for negative in (False, True):
        a, b = rng.sample(OBJECTS, 2)
        rel = rng.choice(RELATIONS)
        texts.append(f"The {rng.choice(ATTRIBUTES)} {a} is {rel} the {rng.choice(ATTRIBUTES)} {b}.")
        fields.append(_fields(rng, a, rel, b, negative))
    return HncPair(texts[0], texts[1], caption_type, [b, a], fields[0], fields[1])


def write_hnc_file(path: str, size_mb: float, pairs_per_image: int = 121, seed: int = 0) -> dict:
    """Write a train-schema HNC file of at least `size_mb` MB (the library's streaming writer); return its counts."""
    rng = random.Random(seed)
    target = int(size_mb * 1e6)
    images = pairs = written = 0
    with HncWriter(path) as writer:
        while written < target or images == 0:
            entry = hnc_train_entry([_pair(rng) for _ in range(pairs_per_image)])  # int cpt_p_id, as the real file
            written += writer.add(str(2_300_000 + images), entry)  # ASCII: characters = bytes
            images += 1
            pairs += pairs_per_image
    size = os.path.getsize(path)
    return {"bytes": size, "images": images, "pairs": pairs, "bytes_per_caption": size / (2 * pairs)}


def _status_mb() -> dict[str, float]:
    """VmRSS, VmHWM (peak RSS), RssAnon (heap) and RssFile (mapped files) of this process, from /proc (Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


class PeakPoller:
    """Polls /proc/self/status every `interval` s in a thread: peaks of RssAnon and RssFile, which VmHWM sums.

    VmHWM counts resident pages of memory-mapped files too (shared libraries, and the Arrow file `datasets` writes
    and maps): page cache the kernel can reclaim. The anonymous part is the memory the conversion itself holds,
    the number that must not grow with file size.
    """

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_anon, self.peak_file = interval, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self):
        status = _status_mb()
        self.peak_anon = max(self.peak_anon, status.get("RssAnon", 0.0))
        self.peak_file = max(self.peak_file, status.get("RssFile", 0.0))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def child(path: str, cache_dir: str, result_path: str, mode: str) -> None:
    """Run in a fresh process: convert `path` (or only parse it) and write timings and memory to `result_path`."""
    import datasets

    from hnc_clip.data import load_hnc_pairs
    from hnc_clip.data.arrow_cache import default_num_proc
    from hnc_clip.data.hnc import iter_pair_batches, paused_gc

    datasets.disable_progress_bars()
    baseline = _status_mb()
    t0 = time.perf_counter()
    ds = None
    num_proc = 1 if mode == "parse" else int(mode.split(":")[1]) or default_num_proc(path)
    with PeakPoller() as poller:
        if mode == "parse":  # the JSON reader alone, one process, no Arrow writing: splits the cost in two
            with paused_gc():  # as the conversion does
                n = sum(len(cols["pair_id"]) for cols in iter_pair_batches(path))
        else:
            ds = load_hnc_pairs(path, cache_dir=cache_dir, num_proc=num_proc)
            n = len(ds)
    seconds = time.perf_counter() - t0
    end = _status_mb()  # with the dataset still alive: its memory-mapped Arrow pages count as RssFile
    del ds
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    # The conversion processes (num_proc > 1) are children: the largest one's peak RSS, and a bound on the sum.
    worker_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if num_proc > 1 else 0.0
    result = {
        "mode": mode,
        "num_proc": num_proc,
        "worker_peak_rss_mb": worker_rss,
        "total_peak_rss_bound_mb": end.get("VmHWM", maxrss) + (num_proc * worker_rss),
        "pairs": n,
        "seconds": seconds,
        "pairs_per_s": n / seconds,
        "mb_per_s": os.path.getsize(path) / 1e6 / seconds,
        "baseline_rss_mb": baseline.get("VmRSS", 0.0),
        "peak_rss_mb": end.get("VmHWM", maxrss),  # the process's peak RSS, imports included
        "maxrss_mb": maxrss,
        "peak_anon_mb": poller.peak_anon,
        "peak_file_mb": poller.peak_file,  # shared libraries + the mapped Arrow output: reclaimable page cache
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


def run_child(path: str, work_dir: str, mode: str) -> dict:
    cache_dir = tempfile.mkdtemp(prefix="hf_cache_", dir=work_dir)
    result_path = os.path.join(work_dir, f"result_{mode.replace(':', '')}_{os.path.basename(path)}.json")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", path, cache_dir, result_path, mode]
    subprocess.run(cmd, check=True, env=env)
    with open(result_path) as f:
        result = json.load(f)
    shutil.rmtree(cache_dir, ignore_errors=True)  # the Arrow cache is about a quarter of the JSON's size
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size_mb", type=float, default=1024, help="Size of the larger file (default 1024 MB).")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0], help="File sizes, × size_mb.")
    parser.add_argument("--pairs_per_image", type=int, default=121)
    parser.add_argument("--parse_only", action="store_true", help="Also time the JSON reader alone (no Arrow).")
    parser.add_argument(
        "--num_proc", type=int, nargs="+", default=[1, 0],
        help="Conversion processes to time, one row each (0: the default, one per 64 MiB up to the CPU count).",
    )
    parser.add_argument("--work_dir", default=None, help="Where to write the files (default: a temp dir).")
    parser.add_argument("--keep", action="store_true", help="Keep the generated files.")
    parser.add_argument("--output", default=os.path.join(REPO, "bench", "results", "convert_hnc.json"))
    parser.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        child(*args._child)
        return {}

    work_dir = tempfile.mkdtemp(prefix="convert_hnc_", dir=args.work_dir)
    rows = []
    try:
        for fraction in sorted(args.fractions):
            size_mb = args.size_mb * fraction
            path = os.path.join(work_dir, f"hnc_{size_mb:g}mb.json")
            t0 = time.perf_counter()
            info = write_hnc_file(path, size_mb, args.pairs_per_image)
            info["generate_s"] = time.perf_counter() - t0
            print(f"wrote {path}: {info['bytes'] / 1e6:.0f} MB, {info['pairs']:,} pairs ({info['generate_s']:.0f} s)")
            modes = [f"convert:{n}" for n in args.num_proc] + ["parse"] * args.parse_only
            for mode in modes:
                rows.append({"size_mb": info["bytes"] / 1e6, **info, **run_child(path, work_dir, mode)})
            if not args.keep:
                os.remove(path)
    finally:
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)

    print(
        f"{'mode':<8} {'procs':>5} {'JSON MB':>8} {'pairs':>11} {'s':>7} {'pairs/s':>9} {'MB/s':>6} {'base MB':>8} "
        f"{'peak MB':>8} {'anon MB':>8} {'mapped MB':>9} {'worker MB':>9}"
    )
    for r in rows:
        print(
            f"{r['mode'].split(':')[0]:<8} {r['num_proc']:>5} {r['size_mb']:>8.0f} {r['pairs']:>11,} "
            f"{r['seconds']:>7.1f} {r['pairs_per_s']:>9,.0f} {r['mb_per_s']:>6.1f} {r['baseline_rss_mb']:>8.0f} "
            f"{r['peak_rss_mb']:>8.0f} {r['peak_anon_mb']:>8.0f} {r['peak_file_mb']:>9.0f} "
            f"{r['worker_peak_rss_mb']:>9.0f}"
        )
    result = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
