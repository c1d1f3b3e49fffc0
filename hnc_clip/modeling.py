"""Loading a dual encoder (CLIP, SigLIP: `hnc_clip.families`) and choosing what trains (`--finetune_mode`); what
the trainer holds of the models its loss reads (`HoldsLossModels`).

Models load from safetensors only (`use_safetensors=True`): a pickle checkpoint from an untrusted repo could run
code on load. `trust_remote_code` is passed through and is off unless the user sets it.
"""

from __future__ import annotations

import copy
import logging
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoProcessor, CLIPModel

from .families import MODEL_FAMILIES, family_of

logger = logging.getLogger(__name__)


class NonFiniteWeightsError(ValueError):
    """A checkpoint holds NaN or infinite weights."""


def check_finite_weights(model: nn.Module, source: str) -> nn.Module:
    """`model`, or `NonFiniteWeightsError` naming the tensors of `source` that hold NaN/inf: such a model scores
    every pair 0.0 and its NaN image embeddings read as "unreadable images" (one pass over the weights, at load)."""
    bad = [(name, int((~torch.isfinite(t)).sum())) for name, t in model.state_dict().items()
           if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())]  # fmt: skip
    if bad:
        shown = ", ".join(f"{name} ({n:,} values)" for name, n in bad[:5])
        raise NonFiniteWeightsError(
            f"{source}: {len(bad)} weight tensors hold NaN or inf, e.g. {shown}{' ...' if len(bad) > 5 else ''}: the "
            "checkpoint is broken (a diverged run, a bad conversion); use an earlier checkpoint"
        )
    return model


def load_model(model_args, dtype: torch.dtype | None = None) -> CLIPModel:
    """The checkpoint as its family's class (`hnc_clip.families`: CLIPModel, SiglipModel, ...), from its config."""
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code,
    )
    model = family_of(config).cls.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        use_safetensors=True,
        dtype=dtype,
    )
    check_finite_weights(model, model_args.model_name_or_path)
    if model_args.patch_embedding_as_matmul:
        patch_embedding_as_matmul(model)
    return with_input_embeddings(model)


class PatchEmbeddingAsMatmul(nn.Conv2d):
    """A ViT patch embedding (`nn.Conv2d` with stride = kernel, no padding) computed as one matrix product over the
    image's non-overlapping patches: the same parameters, state dict and function as the convolution.

    Why: cuDNN's kernels for CLIP's 32×32 filters are slow. ViT-B/32 at batch 1,024 on an H100 (profiled): 6.4 ms
    forward + 8.7 ms weight gradient per step, 7 % of the GPU time, for 0.24 TFLOP each way that a bf16 matrix
    product does in well under a millisecond.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, C, H, W]
        n, c, h, w = x.shape
        (p, q), d = self.kernel_size, self.out_channels
        gh, gw = h // p, w // q  # the convolution drops a remainder row/column of pixels too
        patches = x[:, :, : gh * p, : gw * q].reshape(n, c, gh, p, gw, q)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * p * q)  # [N, L, C·p·q], (c, i, j) order
        out = F.linear(patches, self.weight.reshape(d, c * p * q), self.bias)  # [N, L, D]
        return out.transpose(1, 2).reshape(n, d, gh, gw)  # [N, D, gh, gw], as the convolution returns it


def patch_embedding_as_matmul(model: CLIPModel) -> CLIPModel:
    """Switch the vision tower's patch embedding to `PatchEmbeddingAsMatmul` in place (class swap: parameters,
    hooks and saved checkpoints unchanged) when it is a plain patchifying convolution; else leave it."""
    conv = getattr(getattr(getattr(model, "vision_model", None), "embeddings", None), "patch_embedding", None)
    if (
        type(conv) is nn.Conv2d
        and conv.stride == conv.kernel_size
        and conv.padding in ((0, 0), "valid")
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    ):
        conv.__class__ = PatchEmbeddingAsMatmul
    return model


def with_input_embeddings(model: CLIPModel) -> CLIPModel:
    """Give this CLIPModel a `get_input_embeddings` (the text token embedding).

    transformers' generic one raises NotImplementedError for CLIPModel (two towers, no `embed_tokens`). It was added
    for accelerate's FSDP2 preparation, which calls it; FSDP is refused up front (`check_parallelism` in
    `hnc_clip/engines.py`) and no supported path needs it (without it the LoRA and other training tests pass, and
    `gradient_checkpointing_enable` finds the towers' embeddings by itself). Kept so that generic tools asking a
    loaded model for its input embedding get the text one instead of an exception. Bound on the instance, so the
    class and its saved checkpoints are unchanged.
    """
    try:
        model.get_input_embeddings()
    except NotImplementedError:
        model.get_input_embeddings = types.MethodType(lambda self: self.text_model.embeddings.token_embedding, model)
    return model


def load_processor(model_args):
    return AutoProcessor.from_pretrained(
        model_args.processor_name_or_path or model_args.model_name_or_path,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code,
    )


# ---------------------------------------------------------------------------------------------------------------
# Fine-tune modes: each returns the model to train with requires_grad set. Parameters left frozen are never
# handed to the optimizer (the Trainer only optimises requires_grad params), so they stay bit-identical.


def _train_only(model: CLIPModel, prefixes: tuple[str, ...]) -> CLIPModel:
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
    return model


def _full(model: CLIPModel, args) -> CLIPModel:
    return _train_only(model, ("",))


def _text(model: CLIPModel, args) -> CLIPModel:
    return _train_only(model, family_of(model).text_prefixes)


def _vision(model: CLIPModel, args) -> CLIPModel:
    return _train_only(model, family_of(model).vision_prefixes)


def _last_block(model: CLIPModel, args) -> CLIPModel:
    """Last transformer block of each tower, the final layer norms and both projections (heads)."""
    return _train_only(model, family_of(model).last_block(model.config))


def lora_targets(model, args) -> list[str] | str:
    """`--lora_target_modules`, or the family's attention projections when unset (a peft regex is one string)."""
    targets = list(args.lora_target_modules or family_of(model).lora_targets)
    return targets[0] if len(targets) == 1 and not targets[0].isidentifier() else targets


def _lora(model: CLIPModel, args):
    """LoRA adapters (peft) on the attention projections of both towers; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=lora_targets(model, args),
        bias="none",
    )
    return get_peft_model(model, config)


FINETUNE_MODES: dict[str, Callable] = {
    "full": _full,
    "text": _text,
    "vision": _vision,
    "last_block": _last_block,
    "lora": _lora,
}


def apply_finetune_mode(model: CLIPModel, args):
    model = FINETUNE_MODES[args.finetune_mode](model, args)
    # Under ZeRO-3 (zero.Init) a parameter's local tensor is an empty shard; `ds_numel` is its full size.
    numel = lambda p: getattr(p, "ds_numel", p.numel())  # noqa: E731
    trainable = sum(numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(numel(p) for p in model.parameters())
    logger.info(f"finetune_mode={args.finetune_mode}: {trainable:,} of {total:,} parameters train")
    if trainable == 0:
        raise ValueError(f"--finetune_mode {args.finetune_mode} leaves no parameter to train")
    return model


def frozen_copy(model: CLIPModel) -> CLIPModel:
    """The starting model as a frozen reference/teacher (`kl_teacher`, `dpo`): eval mode, no gradients."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def load_reference(model_args, model: CLIPModel) -> CLIPModel:
    """The frozen starting model for `kl_teacher`/`dpo`, whole on every process and never trained.

    Under DeepSpeed ZeRO-3, `from_pretrained` builds the trained model inside `zero.Init`, already sharded, so a
    copy of it would be shards without the hooks that gather them. The reference is then loaded again with ZeRO-3
    initialisation switched off: a plain module that DeepSpeed never sees (it is small next to the optimizer state).
    """
    from transformers.integrations import deepspeed as hf_ds

    if not hf_ds.is_deepspeed_zero3_enabled():
        return frozen_copy(model)
    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        reference = load_model(model_args)
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved
    return frozen_copy(reference)


def _is_dual_encoder(model) -> bool:
    family = MODEL_FAMILIES.get(getattr(getattr(model, "config", None), "model_type", None))
    return family is not None and isinstance(model, family.cls)


def unwrap_dual_encoder(model) -> CLIPModel:
    """The family's model (`CLIPModel`, `SiglipModel`, ...: `hnc_clip.families`) under peft/DDP/DeepSpeed/
    torch.compile wrappers (for `logit_scale`, `logit_bias` and the config)."""
    while not _is_dual_encoder(model):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            raise TypeError(
                f"expected one of {sorted(f.model_class for f in MODEL_FAMILIES.values())} (possibly wrapped), "
                f"got {type(model).__name__}"
            )
    return model


# The name the rest of the package (and other branches) import; any family's model, not only CLIP's.
unwrap_clip = unwrap_dual_encoder


def logit_bias(model) -> torch.Tensor | None:
    """The learned logit bias as a 0-dim tensor (SigLIP), or None for a family without one (CLIP)."""
    inner = unwrap_dual_encoder(model)
    return inner.logit_bias.reshape(()) if family_of(inner).has_logit_bias else None


class LogitScaleTap:
    """Captures `exp(logit_scale)` (0-dim) and, for SigLIP, `logit_bias` at the end of each forward of the model.

    Under DeepSpeed ZeRO-3 a parameter holds its full value only while its module runs; read afterwards,
    `model.logit_scale` is an empty shard. This forward hook is prepended to every other hook, so it runs before
    ZeRO-3's release and the captured tensor stays connected to the parameter for the backward pass. Without
    ZeRO-3 it is simply the same value as reading the parameter.
    """

    def __init__(self, model):
        self.value: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.handle = unwrap_dual_encoder(model).register_forward_hook(self._hook, prepend=True)

    def _hook(self, module, args, output):
        self.value = module.logit_scale.exp().reshape(())  # SigLIP stores it as [1]
        self.bias = module.logit_bias.reshape(()) if family_of(module).has_logit_bias else None

    def remove(self) -> None:
        self.handle.remove()


class HoldsLossModels:
    """`HncTrainer`'s hold on the models its loss reads (a mixin before `transformers.Trainer`): the frozen reference
    (`LossSpec.needs_reference`), a `LogitScaleTap` on it and on the trained model, and θ₀ for `--l2_reg_weight`;
    bound again to each model `model_init` builds (a hyper-parameter search trial)."""

    _model_tap: LogitScaleTap | None = None  # none yet while Trainer.__init__ runs

    def _bind_models(self, model, reference_model) -> None:
        self.reference_model = reference_model
        if reference_model is not None:
            self.reference_model = reference_model.to(self.args.device)
            if self.is_deepspeed_enabled and (self.args.bf16 or self.args.fp16):
                # DeepSpeed casts the inputs to its compute dtype; the reference must take the same inputs.
                self.reference_model.to(torch.bfloat16 if self.args.bf16 else torch.float16)
        self._reference_tap = LogitScaleTap(self.reference_model) if self.reference_model is not None else None
        self._bind_model(model)

    @property
    def _taps(self) -> tuple[LogitScaleTap | None, LogitScaleTap | None]:
        return self._model_tap, self._reference_tap

    def _bind_model(self, model) -> None:
        """What the trainer keeps of the model it trains: the logit-scale tap and, for `--l2_reg_weight`, θ₀ (only
        the trainable tensors, which are the only ones that can move)."""
        if self._model_tap is not None:
            self._model_tap.remove()
        self._model_tap = LogitScaleTap(model)
        self._theta0 = None
        if self.args.l2_reg_weight > 0:
            self._theta0 = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def call_model_init(self, trial=None):
        model = super().call_model_init(trial)
        if hasattr(self, "_reference_tap"):  # not during Trainer.__init__: __init__ binds its model itself
            self._bind_model(model)
        return model


def merged_for_save(model) -> CLIPModel:
    """A plain `CLIPModel` to save: LoRA adapters merged into the weights, so users load it without peft."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
