"""Run under `accelerate launch --num_processes 2` (gloo) by `tests/test_distributed.py`: the training app's
`main()` with a loss that is NaN on rank 1 only, in the first step. Every process must skip that optimizer step
(the non-finite flag is all-reduced), else the DDP replicas drift apart."""

from __future__ import annotations

import sys

from accelerate import PartialState

from hnc_clip.losses import LOSSES, LossSpec, hnc_loss
from hnc_clip.peers import shutdown_distributed
from hnc_clip.scripts import train as train_app

calls = {"n": 0}


def nan_on_rank1_first(inp, cfg):
    calls["n"] += 1
    out = hnc_loss(inp, cfg)
    if calls["n"] == 1 and PartialState().process_index == 1:
        out["contrastive_loss"] = out["contrastive_loss"] * float("nan")
    return out


if __name__ == "__main__":
    LOSSES["nan_on_rank1_first"] = LossSpec(nan_on_rank1_first)
    train_app.main(*train_app.parse_args(sys.argv[1:]))
    shutdown_distributed()
