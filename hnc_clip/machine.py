"""The machine-dependent defaults of the training flags, decided here only: the flags left unset (`bf16`,
`dataloader_num_workers`, `dataloader_persistent_workers`, `sdpa_backends`) get a value from this machine once, when
the arguments are parsed, and `HncTrainingArguments.machine_defaults` records which (logged at start, written to
the model card and all_results.json). Nothing here writes the environment."""

from __future__ import annotations

import os

# `bool | None` fields that `--flag` alone sets to true (`hnc_clip.scripts.train.make_parser` makes the value
# optional).
TRI_STATE_FLAGS = ("bf16", "dataloader_persistent_workers")


def describe_machine_defaults(args) -> str:
    """One line: the settings this machine decided (flags left unset), for the log at start."""
    chosen = getattr(args, "machine_defaults", {})
    if not chosen:
        return "machine-dependent defaults: none (every such flag was given)"
    values = ", ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in chosen.items())
    return f"machine-dependent defaults (flags left unset, decided on this machine; give a flag to fix it): {values}"


def fast_defaults(
    args, cuda_bf16: bool | None = None, cpus: int | None = None, local_world_size: int | None = None
) -> dict:
    """The machine-dependent defaults of `HncTrainingArguments` (`bf16`, `dataloader_num_workers`,
    `dataloader_persistent_workers`, `sdpa_backends`) for the fields left unset. Workers only help when a GPU
    computes: on a CPU-only run they would take cores from the model. One core per process is left to the training
    loop, which launches the kernels. The keyword arguments stand in for the machine in tests."""
    import torch

    gpu = not args.use_cpu and torch.cuda.is_available()
    if cuda_bf16 is None:
        cuda_bf16 = gpu and torch.cuda.is_bf16_supported()
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
    workers = args.dataloader_num_workers
    if workers is None:
        workers = max(0, min(8, cpus // max(1, local_world_size) - 1)) if gpu or cuda_bf16 else 0
    return {
        "bf16": bool(cuda_bf16 and not args.fp16),
        "dataloader_num_workers": workers,
        "dataloader_persistent_workers": workers > 0,
        # Flash left out on a GPU: see the field's help (measured). A CPU keeps PyTorch's own choice.
        "sdpa_backends": ["efficient", "math"] if gpu or cuda_bf16 else ["flash", "efficient", "math"],
    }


def apply_machine_defaults(args) -> dict:
    """Set each machine-dependent field `args` left unset (None) from `fast_defaults`; the values so decided."""
    decided = {}
    for name, value in fast_defaults(args).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
            decided[name] = value
    return decided
