"""Benchmark: the cost of the in-training evaluations (`--eval_benchmarks`), seconds per evaluation per 1,000 items.

    python bench/watch_cost.py                              # ViT-B/32-sized random CLIP, CPU, fp32, 224-px images
    python bench/watch_cost.py --model tiny --repeat 1      # smoke run
    python bench/watch_cost.py --device cuda

Writes a synthetic world (`hnc_clip.demo.world`: `--test_images` scenes with 8 hard-negative pairs each, and
`--per_class` single-object images per recognition class) and scores it the way a training run's evaluation does
(`hnc_clip.evaluation.watch.BenchmarkWatch`): zero-shot recognition on the image folder and every test pair.
An item is one classified image or one scored pair; the pairs share their images (8 per image), which the unique
encoding exploits. Reported: the best wall time of `--repeat` evaluations, per 1,000 items, with the thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))


def build_model(kind: str, world: str, out: str) -> str:
    """A random-init CLIP with a word tokenizer over the world's texts, at 224 px (`tiny` or `vitb32` sizes)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from hnc_clip.demo.world import WorldConfig, load_world_info, world_texts
    from hnc_clip.tiny import build_image_processor, build_word_tokenizer, words_of

    config = WorldConfig(**load_world_info(world)["config"])
    tokenizer = build_word_tokenizer(words_of(world_texts(config)), model_max_length=77)
    from models import clip_config  # bench/models.py

    torch.manual_seed(0)
    model = CLIPModel(clip_config(kind, len(tokenizer)))
    CLIPProcessor(image_processor=build_image_processor(224), tokenizer=tokenizer).save_pretrained(out)
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vitb32", choices=["vitb32", "tiny"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--test_images", type=int, default=125, help="scenes scored as pairs (8 pairs each)")
    parser.add_argument("--per_class", type=int, default=20, help="recognition images per class (24 classes)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "watch_cost.json"))
    args = parser.parse_args(argv)

    import time

    import torch
    from transformers import CLIPModel, CLIPProcessor

    from hnc_clip.demo.world import make_world
    from hnc_clip.evaluation.watch import BenchmarkWatch, parse_watches

    tmp = tempfile.mkdtemp(prefix="watch_cost_")
    try:
        world = os.path.join(tmp, "world")
        make_world(world, num_train_images=1, num_val_images=1, num_test_images=args.test_images,
                   num_recognition_per_class=args.per_class, image_size=args.image_size, show_progress=False)
        model_dir = build_model(args.model, world, os.path.join(tmp, "model"))
        model = CLIPModel.from_pretrained(model_dir).to(args.device).eval()
        processor = CLIPProcessor.from_pretrained(model_dir)
        specs = parse_watches([
            f"recognition=zeroshot:{world}/recognition,classnames={world}/recognition/classnames.json,"
            f"templates={world}/recognition/templates.json",
            f"pairs=pairs:{world}/test.json,images={world}/images",
        ])  # fmt: skip
        watch = BenchmarkWatch(specs, processor, batch_size=args.batch_size)
        runs = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            runs.append(watch(model))
            runs[-1]["total_seconds"] = time.perf_counter() - start
        best = min(runs, key=lambda r: r["total_seconds"])
        rows = {}
        for w in watch.watched:
            n, seconds = best[f"{w.spec.name}_items"], best[f"{w.spec.name}_seconds"]
            rows[w.spec.name] = {"items": int(n), "seconds": seconds, "seconds_per_1000_items": 1000 * seconds / n}
        total_items = sum(r["items"] for r in rows.values())
        result = {
            "model": args.model, "device": args.device, "threads": torch.get_num_threads(),
            "image_size": args.image_size, "batch_size": args.batch_size, "repeat": args.repeat,
            "benchmarks": rows, "total_seconds": best["total_seconds"],
            "seconds_per_1000_items": 1000 * best["total_seconds"] / total_items,
        }  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'benchmark':<12} {'items':>6} {'s/eval':>8} {'s/1000 items':>13}")
    for name, r in rows.items():
        print(f"{name:<12} {r['items']:>6} {r['seconds']:>8.2f} {r['seconds_per_1000_items']:>13.2f}")
    print(f"{'all':<12} {total_items:>6} {result['total_seconds']:>8.2f} {result['seconds_per_1000_items']:>13.2f}"
          f"   ({args.model}, {args.device}, {result['threads']} threads)")  # fmt: skip
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
