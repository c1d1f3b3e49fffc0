"""Run under `accelerate launch` by `tests/test_multinode.py`: the training app, whose machine stops at the start of a
given step as a machine that dies would — its launcher (the torchrun agent, this process's parent) and this process
get SIGKILL (a crash, the OOM killer, a node lost), or SIGSTOP (a machine that hangs, or a network cut: its sockets
stay open and say nothing).

    accelerate launch ... tests/dist_die.py SIGNAL STEP <run_hnc_clip flags>
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import TrainerCallback

from hnc_clip.scripts import train as train_app


class DieAtStep(TrainerCallback):
    def __init__(self, sig: int, step: int):
        self.sig, self.step = sig, step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            print(f"dist_die: {signal.Signals(self.sig).name} to the launcher {os.getppid()} and to {os.getpid()}",
                  flush=True)  # fmt: skip
            os.kill(os.getppid(), self.sig)
            os.kill(os.getpid(), self.sig)


if __name__ == "__main__":
    sig, step = getattr(signal, sys.argv[1]), int(sys.argv[2])
    train_app.main(*train_app.parse_args(sys.argv[3:]), callbacks=[DieAtStep(sig, step)])
    sys.exit("dist_die: training ended before the step to die at")
