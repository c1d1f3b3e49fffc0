"""Benchmark: negatives written by a causal LM (`hnc_clip.negatives.lm`, what `hnc-clip-negatives` runs per
process), captions/s for each batch size, greedy and sampled, with and without the plausibility filter.

    python bench/negative_lm.py                                  # a random GPT-2, 4 layers x 256, on the CPU
    python bench/negative_lm.py --n_layer 1 --n_embd 32 --captions 8 --batch_sizes 4 --max_new_tokens 4  # smoke
    python bench/negative_lm.py --model Qwen/Qwen2.5-1.5B-Instruct --device cuda    # a real LM, on a GPU

Without `--model`, a randomly initialised GPT-2 of the given shape and a byte-level BPE tokenizer are built in code
(`hnc_clip.tiny.save_tiny_causal_lm`) and loaded from their folder; its text is noise that rarely ends a line, so
nearly every negative runs the full `--max_new_tokens` (the worst case for time; a trained LM stops at the line end).
Each caption gets one prompt per type (`--types`, default all 7), so captions/s = prompts/s / types. Captions:
COCO-like, from `bench/negative_rules.py`. Time is wall time of `write_negatives` (generation, parsing, filters) on
`--threads` torch threads, after one warm-up batch; the CPU time is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from negative_rules import captions  # noqa: E402

from hnc_clip.negatives.lm import (  # noqa: E402
    PROMPTS,
    TYPES,
    FilterOptions,
    GenerationSettings,
    LMGenerator,
    LogLikelihoodScorer,
    build_filters,
    write_negatives,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(model, tokenizer, texts, types, batch_size, sample, plausibility, max_new_tokens) -> dict:
    generate = LMGenerator(model, tokenizer, GenerationSettings(max_new_tokens=max_new_tokens, do_sample=sample))
    names = ["differs", "length", "dedupe"] + (["plausibility"] if plausibility else [])
    scorer = LogLikelihoodScorer(model, tokenizer, batch_size) if plausibility else None
    filters = build_filters(names, FilterOptions(scorer=scorer))
    write_negatives(texts[:batch_size], types, PROMPTS, generate, filters, lambda k: 0, True)  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    kept = 0
    for i in range(0, len(texts), batch_size):
        seed_of = lambda kind, i=i: i  # noqa: E731
        rows = write_negatives(texts[i : i + batch_size], types, PROMPTS, generate, filters, seed_of, True)
        kept += sum(len(r.negatives) for r in rows)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "batch_size": batch_size, "sampling": sample, "plausibility": plausibility,
        "captions_per_s": len(texts) / wall, "prompts_per_s": len(texts) * len(types) / wall,
        "cpu_captions_per_s": len(texts) / cpu, "kept_per_caption": kept / len(texts),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="A causal LM (Hub name or folder); default: a random GPT-2.")
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=256)
    parser.add_argument("--captions", type=int, default=16)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--types", nargs="+", default=list(TYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared: 1)")
    parser.add_argument("--output", default=os.path.join(REPO, "bench", "results", "negative_lm.json"))
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hnc_clip.tiny import save_tiny_causal_lm

    torch.set_num_threads(args.threads)
    texts = captions(args.captions)
    work = tempfile.mkdtemp(prefix="bench_negative_lm_")
    try:
        path = args.model
        if path is None:
            prompts = [PROMPTS[t].format(c) for t in args.types for c in texts[:32]]
            path = save_tiny_causal_lm(work, prompts, vocab_size=2000, n_layer=args.n_layer, n_embd=args.n_embd,
                                       n_head=max(1, args.n_embd // 64))  # fmt: skip
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
        params = sum(p.numel() for p in model.parameters())
        name = args.model or f"random GPT-2 {args.n_layer} x {args.n_embd}"
        print(f"{name} ({params / 1e6:.1f} M parameters) on {args.device}, {args.threads} thread(s); {len(texts)} "
              f"captions x {len(args.types)} types, {args.max_new_tokens} new tokens at most; one process")
        print("| batch | decoding | plausibility | captions/s | prompts/s | captions/s of CPU time | kept/caption |")
        print("|---|---|---|---|---|---|---|", flush=True)
        rows = []
        for batch_size in args.batch_sizes:
            for sample, plausibility in ((False, False), (True, False), (False, True)):
                r = measure(model, tokenizer, texts, args.types, batch_size, sample, plausibility, args.max_new_tokens)
                rows.append(r)
                decoding, scored = "sampled" if r["sampling"] else "greedy", "yes" if r["plausibility"] else "-"
                print(f"| {r['batch_size']} | {decoding} | {scored} | {r['captions_per_s']:,.2f} "
                      f"| {r['prompts_per_s']:,.1f} | {r['cpu_captions_per_s']:,.2f} | {r['kept_per_caption']:.2f} |",
                      flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    result = {
        "model": name, "parameters": params, "device": args.device, "threads": args.threads,
        "captions": len(texts), "types": args.types, "max_new_tokens": args.max_new_tokens,
        "commit": commit.stdout.strip(), "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "rows": rows,
    }  # fmt: skip
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", args.output)


if __name__ == "__main__":
    main()
