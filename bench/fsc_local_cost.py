"""Benchmark: what FSC-CLIP's local token–patch term (`--fsc_local_weight`) adds to a training step.

    python bench/fsc_local_cost.py                        # ViT-B/32-sized random CLIP, CPU, fp32, 224-px images
    python bench/fsc_local_cost.py --model tiny --repeat 1   # smoke run
    python bench/fsc_local_cost.py --device cuda --batch_size 256

One loss step (forward over B images and [B positives; K·B negatives] of `--text_length` tokens, the loss, backward)
of `fsc_clip` without and with the local term, on random pixels and token ids. Reported: the best wall time of
`--repeat` steps each, their ratio, the loss step's own share (the local term alone, on the cached embeddings), and
the token embeddings' size (B·(Q + (1+K)·L)·D floats: what GradCache caches beside the pooled ones), with the
peak device memory of each step on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vitb32", choices=["vitb32", "tiny"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--negatives", type=int, default=1, help="K hard negatives per pair")
    parser.add_argument("--text_length", type=int, default=24, help="tokens per caption (the batch's padded length)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "fsc_local_cost.json"))
    args = parser.parse_args(argv)

    import torch
    from models import build_model, clip_config  # bench/models.py

    from hnc_clip.forward import build_loss_inputs
    from hnc_clip.losses import LOSSES, LossConfig, total_loss

    device = torch.device(args.device)
    model = build_model(clip_config(args.model, 1000), "sdpa").to(device).train()
    b, k, length = args.batch_size, args.negatives, args.text_length
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 1000, ((1 + k) * b, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # start ... EOS (the bench models' ids)
    batch = {
        "pixel_values": torch.randn(b, 3, 224, 224, generator=g).to(device),
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
    }
    spec = LOSSES["fsc_clip"]

    def step(cfg: LossConfig) -> tuple[float, int]:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        inp = build_loss_inputs(model, batch, with_tokens=spec.needs_tokens(cfg))
        total_loss(spec.fn(inp, cfg), inp).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
        return time.perf_counter() - t0, peak

    settings = {"global": LossConfig(hard_negative_weight=0.5), "local": LossConfig(hard_negative_weight=0.5,
                                                                                     fsc_local_weight=0.2)}
    runs: dict[str, list] = {name: [] for name in settings}
    for cfg in settings.values():
        step(cfg)  # warm-up
    for _ in range(args.repeat):  # interleaved, so that a machine's drift hits both alike
        for name, cfg in settings.items():
            runs[name].append(step(cfg))
    seconds = {name: min(r[0] for r in rs) for name, rs in runs.items()}
    peaks = {name: max(r[1] for r in rs) for name, rs in runs.items()}

    # the local term alone, on embeddings computed once (what the loss itself costs beside the towers)
    inp = build_loss_inputs(model, batch, with_tokens=True)
    tok = inp.local.tokens
    leaves = [t.detach().requires_grad_() for t in (tok.image, tok.positive, tok.negative)]
    tok.image, tok.positive, tok.negative = leaves
    times = []
    for _ in range(1 + args.repeat):  # the first is a warm-up
        t0 = time.perf_counter()
        out = spec.fn(inp, settings["local"])["local_hard_negative_loss"]
        torch.autograd.grad(out, leaves, retain_graph=True)
        times.append(time.perf_counter() - t0)
    term = min(times[1:])
    q, dim = tok.image.shape[1], tok.image.shape[2]
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
        "model": args.model, "batch_size": b, "negatives": k, "text_length": length, "patches": q,
        "step_seconds_global": round(seconds["global"], 4), "step_seconds_with_local": round(seconds["local"], 4),
        "ratio": round(seconds["local"] / seconds["global"], 3), "local_term_seconds": round(term, 4),
        "token_embedding_mib": round(b * (q + (1 + k) * length) * dim * 4 / 2**20, 2),
        **({"peak_mib_global": peaks["global"] // 2**20, "peak_mib_with_local": peaks["local"] // 2**20}
           if device.type == "cuda" else {}),
    }  # fmt: skip
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
