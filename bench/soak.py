"""Soak: thousands of steps of the real training application on a tiny CLIP with DataLoader workers; does memory grow?

The run goes through `hnc_clip.scripts.train.main` (Arrow pairs → `ImageJoin` in the workers → `HncCollator` →
`HncTrainer` with its `StepGuard`), on synthetic GQA-like JPEGs of which a few are corrupt and captions of which a
few are far too long, so the skip and truncation paths run all along. The resident memory (RSS, from /proc) of the
training process and of its DataLoader workers is sampled at step `--warmup_steps` (the start: allocator pools,
worker prefetch queues and the first batches' buffers are in place by then) and at the end:

    python bench/soak.py [--steps 3000] [--num_workers 2] [--batch_size 16]

Prints one row per sample and the growth from start to end; exits 1 if the training process grew by more than
`--max_growth_mb` (workers are reported too: persistent workers that leak would show there).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

from synthetic_data import write_hnc_json, write_jpegs
from transformers import TrainerCallback

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


class SampleMemory(TrainerCallback):
    """RSS of this process and of its children (the DataLoader workers) at the given steps."""

    def __init__(self, at: set[int]):
        self.at, self.rows, self.start = at, [], time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.at:
            workers = children(os.getpid())
            self.rows.append({
                "step": state.global_step,
                "seconds": round(time.perf_counter() - self.start, 1),
                "main_rss_mb": round(rss_mb(os.getpid()), 1),
                "workers": len(workers),
                "workers_rss_mb": round(sum(rss_mb(w) for w in workers if os.path.exists(f"/proc/{w}")), 1),
            })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--warmup_steps", type=int, default=200, help="The start sample is taken here.")
    parser.add_argument("--samples", type=int, default=6, help="RSS samples, start to end.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--pairs_per_image", type=int, default=8)
    parser.add_argument("--corrupt_every", type=int, default=24, help="Every n-th image is a corrupt file.")
    parser.add_argument("--max_growth_mb", type=float, default=32.0)
    parser.add_argument("--work_dir", default=None)
    parser.add_argument("--output", default="bench/results/soak.json")
    args = parser.parse_args(argv)

    import torch

    from hnc_clip.scripts import train as train_app
    from hnc_clip.tiny import save_tiny_clip

    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="hnc-soak-", dir=args.work_dir)
    try:
        images = os.path.join(work, "images")
        names = write_jpegs(images, args.images, size=(64, 48))
        for name in names[:: args.corrupt_every]:  # truncated: decodes fail inside the workers
            with open(os.path.join(images, name), "r+b") as f:
                f.truncate(100)
        hnc = os.path.join(work, "train.json")
        texts = write_hnc_json(hnc, names, args.pairs_per_image)
        rng = random.Random(0)
        with open(hnc) as f:  # a few captions of 20,000 characters: truncated (and counted) in every epoch
            data = json.load(f)
        for entry in list(data.values())[::16]:
            cap = next(iter(entry["captions"].values()))
            cap["caption"] = " ".join(rng.choice(texts[:50]) for _ in range(400))[:20_000]
        with open(hnc, "w") as f:
            json.dump(data, f)
        model = save_tiny_clip(os.path.join(work, "model"), texts, image_size=32, hidden_size=32, num_layers=2,
                               projection_dim=16)  # fmt: skip
        last = args.steps
        at = {args.warmup_steps, last} | {
            args.warmup_steps + (last - args.warmup_steps) * k // (args.samples - 1) for k in range(1, args.samples)
        }
        sampler = SampleMemory(at)
        flags = [
            "--model_name_or_path", model, "--train_file", hnc, "--image_dir", images,
            "--output_dir", os.path.join(work, "out"), "--cache_dir", os.path.join(work, "cache"), "--do_train",
            "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
            "--learning_rate", "1e-4", "--logging_steps", "500", "--save_strategy", "no", "--use_cpu",
            "--dataloader_num_workers", str(args.num_workers), "--report_to", "none", "--seed", "0",
            "--disable_tqdm", "true", "--log_level", "error",
        ]  # fmt: skip
        t0 = time.perf_counter()
        results = train_app.main(*train_app.parse_args(flags), callbacks=[sampler])
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = sorted(sampler.rows, key=lambda r: r["step"])
    first, end = rows[0], rows[-1]
    growth = end["main_rss_mb"] - first["main_rss_mb"]
    workers_growth = end["workers_rss_mb"] - first["workers_rss_mb"]
    print(f"{'step':>6} {'s':>7} {'main RSS MB':>12} {'workers':>8} {'workers RSS MB':>15}")
    for r in rows:
        print(f"{r['step']:>6} {r['seconds']:>7} {r['main_rss_mb']:>12} {r['workers']:>8} {r['workers_rss_mb']:>15}")
    per_k = growth / max(1, end["step"] - first["step"]) * 1000
    print(f"main process: {first['main_rss_mb']} → {end['main_rss_mb']} MB ({growth:+.1f} MB, {per_k:+.2f} MB per "
          f"1,000 steps); workers: {first['workers_rss_mb']} → {end['workers_rss_mb']} MB ({workers_growth:+.1f} MB)")
    print(f"{args.steps} steps in {wall:.0f} s; skipped_images {results['train_skipped_images']}, "
          f"pairs {results['train_pairs']}")  # fmt: skip
    summary = {
        "args": vars(args), "rows": rows, "main_growth_mb": round(growth, 1),
        "workers_growth_mb": round(workers_growth, 1), "wall_s": round(wall, 1),
        "train_skipped_images": results["train_skipped_images"], "train_pairs": results["train_pairs"],
    }  # fmt: skip
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(summary, f, indent=1)
    if growth > args.max_growth_mb:
        print(f"RSS of the training process grew by {growth:.1f} MB > --max_growth_mb {args.max_growth_mb}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
