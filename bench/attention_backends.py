"""Benchmark: SDPA's backends on CLIP's attention shapes, forward + backward, eager and compiled, in one process.

    python bench/attention_backends.py                         # CPU smoke run (small batch)
    python bench/attention_backends.py --device cuda           # ViT-B/32 shapes at a 1,024-pair batch

Why: in the compiled ViT-B/32 training step at batch 1,024 (`bench/RESULTS.md`) flash attention's backward took
34 ms of 136 ms of GPU time, for sequences of 50 (vision) and ~22 (text) tokens: its backward
accumulates dQ in an fp32 buffer padded to 128 query rows per sequence. This times each backend that
`--sdpa_backends` can allow on exactly those shapes, as transformers' CLIP calls SDPA (q, k, v as [B, H, L, D]
views of [B, L, H, D]; vision not causal, text causal without a mask), with flash (SDPA's first choice when
allowed; memory-efficient ran 3x faster here, hence the GPU default `efficient math`, see `bench/RESULTS.md`) as
the baseline of the same run:

    vision  [U, 12, 50, 64]   U = images encoded per step (0.97 per pair for random HNC batches)
    text    [T, 8, L, 64]     T = captions encoded per step (1.98 per pair), L = the batch's longest (~22)

"per step" = forward + backward × 12 layers of that tower: what one training step spends in attention.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.nn.attention import sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from hnc_clip.attention import SDPA_BACKENDS, tag_compile_cache_with_sdpa_backends  # the registry training uses

LAYERS = 12  # ViT-B/32 and its text tower both have 12


def shapes(pairs: int) -> dict[str, dict]:
    """The two towers' attention calls for a batch of `pairs` HNC pairs (ViT-B/32 sizes)."""
    return {
        "vision": {"batch": round(0.97 * pairs), "heads": 12, "length": 50, "head_dim": 64, "causal": False},
        "text": {"batch": round(1.98 * pairs), "heads": 8, "length": 22, "head_dim": 64, "causal": True},
    }


def attention_flop(s: dict) -> float:
    """Forward FLOPs: QKᵀ and PV, 2·L²·D multiply-adds each per head; half under a causal mask."""
    flop = 4 * s["batch"] * s["heads"] * s["length"] ** 2 * s["head_dim"]
    return flop / 2 if s["causal"] else flop


def make_inputs(s: dict, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    # [B, L, H, D] transposed to [B, H, L, D], as transformers' attention hands them to SDPA
    return [
        torch.randn(s["batch"], s["length"], s["heads"], s["head_dim"], device=device, dtype=dtype)
        .transpose(1, 2)
        .requires_grad_()
        for _ in range(3)
    ]


class Clock:
    """Milliseconds of a callable: CUDA events on the GPU (one sync at the end), wall time on the CPU."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __call__(self, fn, iters: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return 1000 * (time.perf_counter() - t0) / iters


def time_backend(backend: str, s: dict, args, compiled: bool) -> dict:
    """Forward and forward + backward ms of one SDPA call under `backend` alone."""
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    q, k, v = make_inputs(s, args.device, dtype)
    grad = torch.randn_like(q)

    def attend(q, k, v):
        return scaled_dot_product_attention(q, k, v, is_causal=s["causal"])

    if compiled:
        # The backend is chosen while tracing: each one gets its own graph, and its own compile-cache key (else
        # the on-disk cache hands back the first backend's graph: so every compiled row was flash until the tag).
        torch._dynamo.reset()
        tag_compile_cache_with_sdpa_backends([backend])
        attend = torch.compile(attend, backend=args.compile_backend, dynamic=False)

    def forward():
        with torch.no_grad():
            attend(q, k, v)

    def forward_backward():
        out = attend(q, k, v)
        torch.autograd.backward(out, grad)
        q.grad = k.grad = v.grad = None

    clock = Clock(args.device)
    with sdpa_kernel([SDPA_BACKENDS[backend]]):
        try:
            for fn in (forward, forward_backward):  # warm-up (and compilation)
                for _ in range(args.warmup):
                    fn()
        except RuntimeError as e:  # e.g. no flash kernel for this device/dtype, no cuDNN
            return {"error": str(e).splitlines()[0][:200]}
        fwd_ms = clock(forward, args.iters)
        fwd_bwd_ms = clock(forward_backward, args.iters)
    flop = attention_flop(s)
    return {
        "forward_ms": fwd_ms,
        "forward_backward_ms": fwd_bwd_ms,
        "per_step_ms": fwd_bwd_ms * LAYERS,
        "forward_backward_tflops_per_s": 3.5 * flop / fwd_bwd_ms / 1e9,  # backward ≈ 2.5× the forward's FLOPs
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--pairs", type=int, default=None, help="pairs per step (default: 1,024 CUDA, 8 CPU)")
    parser.add_argument("--backends", nargs="+", default=["flash", "efficient", "math", "cudnn"],
                        choices=list(SDPA_BACKENDS))
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    parser.add_argument("--compile_backend", default="inductor")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "attention.json"))
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    pairs = args.pairs or (1024 if args.device == "cuda" else 8)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the recipe trains (bf16 autocast + TF32)
    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{os.cpu_count()}"
    rows = []
    for tower, s in shapes(pairs).items():
        for mode in args.modes:
            for backend in args.backends:
                r = {"tower": tower, **s, "mode": mode, "backend": backend}
                r.update(time_backend(backend, s, args, compiled=mode == "compiled"))
                rows.append(r)
    result = {"machine": machine, "torch": torch.__version__, "pairs": pairs, "args": vars(args), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)

    print(f"{machine}, torch {torch.__version__}, {pairs} pairs per step; baseline: flash, same tower and mode")
    print(f"{'tower':7} {'mode':9} {'backend':10} {'fwd ms':>8} {'fwd+bwd ms':>11} {'per step ms':>12} "
          f"{'TFLOP/s':>8} {'vs flash':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['tower']:7} {r['mode']:9} {r['backend']:10} unavailable: {r['error']}")
            continue
        flash = next((b for b in rows if (b["tower"], b["mode"], b["backend"]) == (r["tower"], r["mode"], "flash")
                      and "error" not in b), None)
        speedup = f"{flash['forward_backward_ms'] / r['forward_backward_ms']:.2f}x" if flash else "-"
        print(f"{r['tower']:7} {r['mode']:9} {r['backend']:10} {r['forward_ms']:8.3f} "
              f"{r['forward_backward_ms']:11.3f} {r['per_step_ms']:12.2f} {r['forward_backward_tflops_per_s']:8.1f} "
              f"{speedup:>9}")
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
