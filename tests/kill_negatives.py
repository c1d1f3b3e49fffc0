"""Run `hnc-clip-negatives` and SIGKILL this process halfway through writing its Nth batch of lines (a kill in
the middle of a line, as a preemption can land).

    python tests/kill_negatives.py N -- <hnc-clip-negatives flags>
"""

from __future__ import annotations

import json
import os
import signal
import sys

from hnc_clip.negatives.parts import PartWriter
from hnc_clip.scripts import negatives as app

if __name__ == "__main__":
    at, calls = int(sys.argv[1]), {"n": 0}
    append = PartWriter.append

    def append_then_die(self, entries):
        calls["n"] += 1
        if calls["n"] == at:
            data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            os.fsync(self.file.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        append(self, entries)

    PartWriter.append = append_then_die
    sys.exit(app.cli(sys.argv[3:]))
