"""Benchmark: streamed training data from WebDataset shards — samples/s per DataLoader worker, RSS over a long run,
and the cost of making negatives from the captions in the workers.

    python bench/streaming.py                                  # 4 shards x 250 GQA-sized JPEGs, workers 0 1 2
    python bench/streaming.py --num_workers 2 --passes 20 --negatives ''   # RSS over 20 passes (20,000 samples)

The real path of a streamed run: `hnc_clip.data.sources` (our tar reader through `datasets.IterableDataset`),
`TrainingStream` → `StreamLoader` (`split_dataset_by_node`, torchdata's `StatefulDataLoader`) → `StreamCollator`
(bounded decode, the CLIP image processor at 224, the tokenizer, `HncCollator`), with and without
`--negatives_from_captions all` (lexicon parser built from the captions' words). Per row: samples/s (wall), per
worker, and RSS of the main process and of the workers sampled every `--rss_every` batches (first sample after the
first pass has started = warm; growth = last − warm).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import tarfile
import tempfile
import time

import numpy as np
from profiling import REPO
from soak import children, rss_mb
from synthetic_data import ATTRIBUTES, OBJECTS, RELATIONS, caption, photo_like

from hnc_clip.tiny import build_image_processor, build_word_tokenizer


def write_shards(folder: str, shards: int, per_shard: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    for s in range(shards):
        with tarfile.open(os.path.join(folder, f"{s:05d}.tar"), "w") as tar:
            for j in range(per_shard):
                buf = io.BytesIO()
                photo_like(np.random.default_rng((seed, s, j))).save(buf, "JPEG", quality=90)
                for ext, data in (("jpg", buf.getvalue()), ("txt", caption(rng).encode())):
                    info = tarfile.TarInfo(f"{s:05d}{j:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return os.path.join(folder, f"{{00000..{shards - 1:05d}}}.tar")


def lexicon(folder: str) -> str:
    words = {w: "NOUN" for w in OBJECTS} | {w: "ADJ" for w in ATTRIBUTES}
    for relation in RELATIONS:
        for w in relation.split():
            words.setdefault(w, "ADP")
    words.update({"the": "DET", "is": "AUX", "and": "CCONJ", ".": "PUNCT", "left": "NOUN", "right": "NOUN",
                  "top": "NOUN", "front": "NOUN"})  # fmt: skip
    path = os.path.join(folder, "words.json")
    with open(path, "w") as f:
        json.dump(words, f)
    return path


def run(pattern: str, workers: int, passes: int, batch_size: int, negatives: str | None, words: str,
        rss_every: int) -> dict:  # fmt: skip
    from hnc_clip.arguments import DataArguments
    from hnc_clip.data import StreamCollator, StreamLoader, TrainingStream, parse_source
    from hnc_clip.data.collator import HncCollator, NegativesFromCaptions

    data_args = DataArguments(train_shards=pattern, negatives_from_captions=negatives,
                              caption_parser=f"lexicon:{words}")  # fmt: skip
    stream = TrainingStream([parse_source(f"webdataset:{pattern}")], data_args, seed=0)
    vocab = sorted({*OBJECTS, *ATTRIBUTES, *" ".join(RELATIONS).split(), "the", "is", "and"})
    collator = HncCollator(build_word_tokenizer(vocab, model_max_length=77), max_length=77)
    if negatives:
        from hnc_clip.negatives.rules import CaptionNegatives

        collator = NegativesFromCaptions(collator, CaptionNegatives(negatives, f"lexicon:{words}", seed=0))
    collate = StreamCollator(collator, build_image_processor(224), tuple(stream.names))
    loader = StreamLoader(stream, batch_size=batch_size, collate_fn=collate, num_workers=workers)
    per_pass = None
    samples, rss = 0, []
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        if loader.pass_index >= passes:  # the first batch of the pass after the last
            break
        if per_pass is None and loader.pass_index == 1:
            per_pass = samples
        samples += batch["pixel_values"].shape[0] + int(batch["skipped_images"])
        if i % rss_every == 0:
            rss.append((samples, rss_mb(os.getpid()), sum(rss_mb(p) for p in children(os.getpid()))))
    elapsed = time.perf_counter() - start
    warm = next((r for r in rss if per_pass and r[0] >= per_pass), rss[len(rss) // 2])
    return {
        "workers": workers, "negatives": negatives or "-", "samples": samples, "seconds": round(elapsed, 1),
        "samples_per_s": round(samples / elapsed, 1), "per_worker": round(samples / elapsed / max(1, workers), 1),
        "main_rss_mb": [round(warm[1], 1), round(rss[-1][1], 1)],
        "workers_rss_mb": [round(warm[2], 1), round(rss[-1][2], 1)],
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--per_shard", type=int, default=250)
    p.add_argument("--num_workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--passes", type=int, default=2, help="passes over the shards per row (RSS: use 5 or more)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--rss_every", type=int, default=10, help="batches between RSS samples")
    p.add_argument("--negatives", default="all", help="rules for the second row per worker count ('' to skip)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "streaming.json"))
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="hnc_stream_bench_")
    try:
        pattern = write_shards(tmp, a.shards, a.per_shard)
        words = lexicon(tmp)
        rows = []
        for workers in a.num_workers:
            for negatives in (None, a.negatives or None) if a.negatives else (None,):
                rows.append(run(pattern, workers, a.passes, a.batch_size, negatives, words, a.rss_every))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| workers | negatives | samples | s | samples/s | per worker | main RSS warm → end MB "
          "| workers RSS warm → end MB |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(f"| {r['workers']} | {r['negatives']} | {r['samples']:,} | {r['seconds']} | {r['samples_per_s']:,} | "
              f"{r['per_worker']:,} | {r['main_rss_mb'][0]} → {r['main_rss_mb'][1]} | "
              f"{r['workers_rss_mb'][0]} → {r['workers_rss_mb'][1]} |")  # fmt: skip
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
