"""Run the training app's `main` and send this process a signal at the start of a given step (for reliability tests).

    python tests/kill_run.py SIGNAL STEP -- <run_hnc_clip flags>
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import TrainerCallback

from hnc_clip.scripts import train as train_app


class SignalAtStep(TrainerCallback):
    def __init__(self, sig: int, step: int):
        self.sig, self.step = sig, step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.sig)


if __name__ == "__main__":
    sig, step = getattr(signal, sys.argv[1]), int(sys.argv[2])
    results = train_app.main(*train_app.parse_args(sys.argv[4:]), callbacks=[SignalAtStep(sig, step)])
    sys.exit(143 if results.get("preempted") else 0)
