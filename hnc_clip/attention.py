"""The attention kernels SDPA may choose from (`--sdpa_backends`): the names, and the context a forward runs in.

Its own module so that the arguments can check the names without importing the trainer (tests/test_layers.py)."""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# `--sdpa_backends` names → torch's SDPA backends.
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}

_SDPA_TAG = "|hnc-sdpa="


def tag_compile_cache_with_sdpa_backends(backends) -> None:
    """Make torch.compile's on-disk caches tell graphs traced under different `--sdpa_backends` apart.

    The backend is chosen while a graph is traced, from the `sdpa_kernel` state around it; the FX-graph and
    AOTAutograd caches key a graph by its code, not by that state. A graph cached by an earlier run (or an earlier
    model in this process) under other backends would be reused without a word: on an H100 `--sdpa_backends math`
    ran flash kernels (bench/RESULTS.md, run 8). torch.compiler.config.cache_key_tag enters every cache key, so it
    carries the backends; a tag the user set is kept in front."""
    config = torch.compiler.config
    base = config.cache_key_tag.split(_SDPA_TAG)[0]
    tag = f"{base}{_SDPA_TAG}{','.join(backends)}"
    if config.cache_key_tag != tag:
        config.cache_key_tag = tag


def attention_kernels(backends) -> contextlib.AbstractContextManager:
    """The context a forward and backward run in: SDPA limited to `backends`, the compile caches told which."""
    tag_compile_cache_with_sdpa_backends(backends)
    return sdpa_kernel([SDPA_BACKENDS[name] for name in backends])
