"""open_clip's own model and tokenizer code, imported without its package `__init__` (which imports torchvision).

`open_clip_torch` is installed with `--no-deps` (Makefile): torchvision from PyPI does not load beside this project's
CPU torch, and open_clip's model code needs it for one thing only, `utils.freeze_batch_norm_2d`'s
`FrozenBatchNorm2d`, which building and running a ViT CLIP never calls. That single name is stubbed when
torchvision is absent; every line of model code that runs is open_clip's.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types


def open_clip_modules():
    """(open_clip.model, open_clip.tokenizer) from the installed package, its `__init__` skipped."""
    if "open_clip.tokenizer" in sys.modules:
        return sys.modules["open_clip.model"], sys.modules["open_clip.tokenizer"]
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip_torch is not installed: `make install` (pip install --no-deps open_clip_torch)")
    stubs = {}
    if importlib.util.find_spec("torchvision") is None:
        from transformers.utils import is_torchvision_available

        is_torchvision_available()  # cached now, before the stub exists (open_clip.hf_model imports transformers)
        names = ("torchvision", "torchvision.ops", "torchvision.ops.misc")
        torchvision, ops, misc = (types.ModuleType(n) for n in names)

        class FrozenBatchNorm2d:  # only referenced by freeze_batch_norm_2d, never called for a ViT
            def __init__(self, *args, **kwargs):
                raise RuntimeError("torchvision stub: FrozenBatchNorm2d is not available")

        misc.FrozenBatchNorm2d = FrozenBatchNorm2d
        torchvision.ops, ops.misc = ops, misc
        stubs = {"torchvision": torchvision, "torchvision.ops": ops, "torchvision.ops.misc": misc}
    if "open_clip" not in sys.modules:
        package = types.ModuleType("open_clip")
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = None
        package.__spec__ = importlib.machinery.ModuleSpec("open_clip", None, is_package=True)
        package.__spec__.submodule_search_locations = list(spec.submodule_search_locations)
        sys.modules["open_clip"] = package
    # The stub lives only while open_clip's modules import: transformers probes for torchvision too
    sys.modules.update(stubs)
    try:
        return importlib.import_module("open_clip.model"), importlib.import_module("open_clip.tokenizer")
    finally:
        for name in stubs:
            sys.modules.pop(name, None)


def random_open_clip(embed_dim=16, width=64, layers=2, image_size=32, patch_size=8, vocab_size=49408,
                     context_length=77, quick_gelu=True, seed=0):  # fmt: skip
    """A random-init open_clip `CLIP` (ViT image tower) built in code, in eval mode."""
    import torch

    model_mod, _ = open_clip_modules()
    torch.manual_seed(seed)
    model = model_mod.CLIP(
        embed_dim=embed_dim,
        vision_cfg=model_mod.CLIPVisionCfg(
            layers=layers, width=width, head_width=64, patch_size=patch_size, image_size=image_size
        ),
        text_cfg=model_mod.CLIPTextCfg(
            context_length=context_length, vocab_size=vocab_size, width=width, heads=width // 64, layers=layers
        ),
        quick_gelu=quick_gelu,
    )
    # open_clip initialises some tensors to constants (e.g. LayerNorm); perturb all so a mapping slip cannot hide
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()
