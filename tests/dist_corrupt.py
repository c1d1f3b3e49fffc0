"""Run under `accelerate launch --num_processes 2` (gloo) by `tests/test_distributed.py`: the training app's `main()`
on images of which a third are corrupt, and on rank 1 the first batch unreadable as a whole, so that in step 1
rank 1 has no pair at all (it runs the placeholder) while rank 0 trains on fewer than a full batch."""

from __future__ import annotations

import sys

from accelerate import PartialState

from hnc_clip.data import images
from hnc_clip.peers import shutdown_distributed
from hnc_clip.scripts import train as train_app

join = images.ImageJoin.__call__
calls = {"n": 0}


def first_batch_unreadable_on_rank1(self, batch):
    out = join(self, batch)
    calls["n"] += 1
    if calls["n"] == 1 and PartialState().process_index == 1:
        out["pixel_values"] = [None] * len(out["pixel_values"])
    return out


if __name__ == "__main__":
    images.ImageJoin.__call__ = first_batch_unreadable_on_rank1
    train_app.main(*train_app.parse_args(sys.argv[1:]))
    shutdown_distributed()
