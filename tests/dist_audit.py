"""Run under `accelerate launch` by `tests/test_multinode.py`: the training application (`cli`), recording every
change this process makes inside `--output_dir` as JSON lines in AUDIT_FILE, so that the test can tell which process
wrote what: Python's audit events (files opened for writing, folders made, renames, removals), and the files that
`torch.save` and safetensors write from C++/Rust, which raise none.

    accelerate launch ... tests/dist_audit.py AUDIT_FILE <run_hnc_clip flags>
"""

from __future__ import annotations

import json
import os
import sys

import safetensors.torch
import torch

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
EVENTS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.truncate", "os.link", "os.symlink",
          "shutil.rmtree", "shutil.move", "shutil.copyfile"}  # fmt: skip


def auditor(root: str, log):
    root = os.path.realpath(root)

    def inside(path) -> bool:
        if isinstance(path, int) or path is None:
            return False
        path = os.path.realpath(os.fsdecode(path))
        return path == root or path.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
            paths = [path] if writes else []
        elif event in EVENTS:
            paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for path in paths:
            if inside(path):
                log.write(json.dumps({"event": event, "path": os.path.relpath(os.fsdecode(path), root)}) + "\n")
                log.flush()
                break

    return hook


def audited(save, position: int):
    """`save` that first raises an audit event for the file it writes (argument `position`)."""

    def wrapper(*args, **kwargs):
        path = args[position] if len(args) > position else kwargs.get("f", kwargs.get("filename"))
        if isinstance(path, (str, os.PathLike)):
            sys.audit("open", os.fspath(path), "wb", 0)
        return save(*args, **kwargs)

    return wrapper


if __name__ == "__main__":
    audit_file, argv = sys.argv[1], sys.argv[2:]
    output_dir = argv[argv.index("--output_dir") + 1]
    log = open(audit_file, "w")  # noqa: SIM115 (open for the life of the process)
    sys.addaudithook(auditor(output_dir, log))
    # Before transformers is imported: it binds `from safetensors.torch import save_file` at import time.
    torch.save = audited(torch.save, 1)
    safetensors.torch.save_file = audited(safetensors.torch.save_file, 1)

    from hnc_clip.scripts import train as train_app

    sys.exit(train_app.cli(argv))
