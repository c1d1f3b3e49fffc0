"""Run under `accelerate launch --num_processes 2` (gloo) by `tests/test_distributed.py`: `run_hnc_clip.py`'s
`main()` with a loss that is NaN on rank 1 only, in the first step. Every process must skip that optimizer step
(the non-finite flag is all-reduced), else the DDP replicas drift apart."""

from __future__ import annotations

import sys

from accelerate import PartialState

import run_hnc_clip
from hnc_clip.losses import LOSSES, LossSpec, hnc_loss

calls = {"n": 0}


def nan_on_rank1_first(inp, cfg):
    calls["n"] += 1
    out = hnc_loss(inp, cfg)
    if calls["n"] == 1 and PartialState().process_index == 1:
        out["contrastive_loss"] = out["contrastive_loss"] * float("nan")
    return out


if __name__ == "__main__":
    LOSSES["nan_on_rank1_first"] = LossSpec(nan_on_rank1_first)
    run_hnc_clip.main(*run_hnc_clip.parse_args(sys.argv[1:]))
    run_hnc_clip.shutdown_distributed()
