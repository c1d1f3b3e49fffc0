"""Which distributed engines the recipe trains under: refused up front, naming what works."""

from __future__ import annotations


class UnsupportedParallelismError(ValueError):
    """A distributed engine this recipe does not support (yet)."""


def check_parallelism(trainer) -> None:
    """Refuse FSDP up front, naming what works, instead of a stack trace from inside `accelerator.prepare`."""
    if getattr(trainer, "is_fsdp_enabled", False):
        raise UnsupportedParallelismError(
            "FSDP is not supported: FSDP2's fully_shard refuses CLIP's 0-dim `logit_scale` parameter "
            "(\"fully_shard doesn't support scalar parameters\"; seen with torch 2.11 on an H200), and changing its "
            "shape would break loading the checkpoint as a CLIPModel. Use DDP (accelerate_configs/multi_gpu.yaml) or "
            "DeepSpeed ZeRO-2/3 (accelerate_configs/zero2.yaml, zero3.yaml), which shard optimizer state and "
            "parameters too."
        )
    args = getattr(trainer, "args", None)
    if getattr(args, "gradcache_chunk_size", 0) and getattr(trainer, "is_deepspeed_enabled", False):
        raise UnsupportedParallelismError("--gradcache_chunk_size works with one process and DDP, not DeepSpeed")
