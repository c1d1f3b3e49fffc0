"""What every worker process this package starts (JSON→Arrow conversion, image cache building) does first."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: the worker dies when its parent does, and a SIGTERM ends it at once.

    Without this a worker outlives a parent killed by a scheduler (SIGKILL) and keeps its memory, blocked on a pipe
    nobody reads; and a forked worker inherits the run's SIGTERM handler, which would unwind it like a run instead
    of letting `Pool.terminate` stop it. PR_SET_PDEATHSIG is Linux's; elsewhere the worker outlives a SIGKILLed
    parent until its current task ends."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which terminates the pool
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
