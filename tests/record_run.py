"""Run the training app's `main`, writing the pair ids each optimizer step trained on, one JSON line per micro-step
(`<dir>/process_<rank>.jsonl`); optionally send this process a signal at the start of a given step.

    python tests/record_run.py DIR [SIGNAL STEP] -- <run_hnc_clip flags>      (also under `accelerate launch`)
"""

from __future__ import annotations

import json
import os
import signal
import sys

from hnc_clip.peers import shutdown_distributed
from hnc_clip.scripts import train as train_app
from hnc_clip.trainer import HncTrainer
from tests.kill_run import SignalAtStep  # noqa: E402  (run as a script: the repo root is on PYTHONPATH)


def main() -> int:
    split = sys.argv.index("--")
    head, flags = sys.argv[1:split], sys.argv[split + 1 :]
    out = head[0]
    os.makedirs(out, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    compute_loss = HncTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if model.training:
            with open(os.path.join(out, f"process_{rank}.jsonl"), "a") as f:
                row = {"step": self.state.global_step + 1, "pair_ids": inputs.get("pair_ids", [])}
                f.write(json.dumps(row) + "\n")
        return compute_loss(self, model, inputs, *args, **kwargs)

    HncTrainer.compute_loss = recording
    callbacks = [SignalAtStep(getattr(signal, head[1]), int(head[2]))] if len(head) == 3 else []
    results = train_app.main(*train_app.parse_args(flags), callbacks=callbacks)
    shutdown_distributed()
    return 143 if results.get("preempted") else 0


if __name__ == "__main__":
    sys.exit(main())
