"""Model families: what the recipe needs to know about each kind of dual encoder, picked from `config.model_type`.

Every family is an HF dual encoder whose forward returns L2-normalised `image_embeds` and `text_embeds` and which
holds its temperature as `logit_scale` (log space); what differs is how its text must be fed, which contrastive
term it was trained with, and where its blocks are named:

    model_type    class            text tower                               contrastive term
    clip          CLIPModel        causal, pooled at the first EOS          softmax (InfoNCE)
    metaclip_2    MetaClip2Model   causal, pooled at the first EOS          softmax (InfoNCE)
    siglip        SiglipModel      bidirectional, pooled at the last token  sigmoid, with a learned logit_bias
    siglip2       Siglip2Model     as siglip (NaFlex vision inputs)         sigmoid, with a learned logit_bias

`clip` covers OpenAI CLIP, MetaCLIP and other CLIP-architecture checkpoints. SigLIP 2's fixed-resolution (FixRes)
checkpoints, e.g. `google/siglip2-base-patch16-224`, publish `model_type: siglip` and load as `SiglipModel`; only
the NaFlex ones (e.g. `google/siglip2-base-patch16-naflex`) are `siglip2` / `Siglip2Model`.

Text: a causal tower pooled at EOS never lets a real token see a pad, so right padding without the mask changes
nothing (`HncCollator.omit_padding_mask`). SigLIP's tower is bidirectional and reads the *last position*: it was
trained on text padded to 64 tokens (`padding="max_length"`, as transformers' SigLIP docs and processors say) with no
attention mask (open_clip passes none; its pad token is EOS), so what the pooled position holds, and what it
attends to, depends on the padding. Feeding it dynamically padded or masked text would give embeddings it never
saw; the family therefore pads to the text tower's length on the checkpoint tokenizer's own side (as its processor
does) and passes no mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import transformers

# Attention projections of the transformer blocks: q/k/v/out in every family here. SigLIP's vision head is an
# `nn.MultiheadAttention` whose `out_proj` its forward reads as a weight (never calls), so LoRA there would train
# nothing: its targets are the blocks' `self_attn` only (a peft regex, matched against full module names).
CLIP_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
SIGLIP_LORA_TARGETS = (r".*\.self_attn\.(q_proj|k_proj|v_proj|out_proj)",)


def _clip_last_block(config) -> tuple[str, ...]:
    last_text, last_vision = config.text_config.num_hidden_layers - 1, config.vision_config.num_hidden_layers - 1
    return (
        f"text_model.encoder.layers.{last_text}.", "text_model.final_layer_norm.", "text_projection.",
        f"vision_model.encoder.layers.{last_vision}.", "vision_model.post_layernorm.", "visual_projection.",
    )  # fmt: skip


def _siglip_last_block(config) -> tuple[str, ...]:
    # The towers' projections live inside them: `text_model.head` (linear), `vision_model.head` (attention pooling).
    last_text, last_vision = config.text_config.num_hidden_layers - 1, config.vision_config.num_hidden_layers - 1
    return (
        f"text_model.encoder.layers.{last_text}.", "text_model.final_layer_norm.", "text_model.head.",
        f"vision_model.encoder.layers.{last_vision}.", "vision_model.post_layernorm.", "vision_model.head.",
    )  # fmt: skip


def _square_placeholder(config, dtype, device) -> dict:
    """A black image_size × image_size image (CLIP, SigLIP: fixed-size vision input)."""
    import torch

    vision = config.vision_config
    size = vision.image_size
    return {"pixel_values": torch.zeros(1, vision.num_channels, size, size, dtype=dtype, device=device)}


def _naflex_placeholder(config, dtype, device) -> dict:
    """A black image as SigLIP 2 NaFlex takes it: [1, N, C·p²] patch rows, the first side² of them real (a square
    grid), `pixel_attention_mask` [1, N] and `spatial_shapes` [1, 2] as `Siglip2ImageProcessor` returns them."""
    import math

    import torch

    vision = config.vision_config
    n, side = vision.num_patches, math.isqrt(vision.num_patches)
    mask = torch.zeros(1, n, dtype=torch.int32, device=device)
    mask[0, : side * side] = 1
    return {
        "pixel_values": torch.zeros(1, n, vision.num_channels * vision.patch_size**2, dtype=dtype, device=device),
        "pixel_attention_mask": mask,
        "spatial_shapes": torch.tensor([[side, side]], dtype=torch.long, device=device),
    }


def _clip_token_embeddings(model, out) -> tuple:
    """CLIP's per-patch and per-token embeddings in the joint space, as open_clip's towers give FSC-CLIP's
    `return_dense_tokens`: the patch tokens (class token dropped) through `post_layernorm` and the visual
    projection, every caption position (after the final layer norm) through the text projection; not normalised.
    `model`: the unwrapped CLIPModel; `out`: its forward's output. → ([U, Q, D], [T, L, D])."""
    hidden = out.vision_model_output.last_hidden_state[:, 1:]  # [U, Q, H]
    patches = model.visual_projection(model.vision_model.post_layernorm(hidden))
    return patches, model.text_projection(out.text_model_output.last_hidden_state)


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_class: str  # the transformers class, by name (resolved lazily: `cls`)
    contrastive: str  # which variant of a loss trains it: "softmax" (InfoNCE) or "sigmoid" (`hnc_clip.losses`)
    # Text: "longest" = dynamic padding (right, mask dropped: causal towers); "max_length" = pad every caption to
    # the tower's length on the tokenizer's own side, as the checkpoint's processor does.
    text_padding: str
    text_attention_mask: bool  # False: the text tower never gets a padding mask (`hnc_clip.forward.embed`)
    has_logit_bias: bool  # a learned `logit_bias` (SigLIP) enters the loss beside exp(logit_scale)
    # Default clamp of exp(logit_scale) (`--max_logit_scale` unset): 100 as OpenAI CLIP, open_clip and NegCLIP;
    # None for SigLIP, whose big_vision training learns t = exp(t') unclamped.
    max_logit_scale: float | None
    lora_targets: tuple[str, ...]
    text_prefixes: tuple[str, ...]  # `--finetune_mode text`
    vision_prefixes: tuple[str, ...]  # `--finetune_mode vision`
    last_block: Callable[[object], tuple[str, ...]]  # `--finetune_mode last_block`, from the model's config
    # Per-image inputs the image processor returns beside `pixel_values` (NaFlex: patch mask and grid shape).
    pixel_inputs: tuple[str, ...] = ()
    # One stand-in image in this family's input layout (`hnc_clip.forward.placeholder_batch`): (config, dtype, device)
    # → {"pixel_values": ..., and each of `pixel_inputs`}.
    placeholder_pixels: Callable[..., dict] = _square_placeholder
    # (unwrapped model, its forward's output) → (patch embeddings [U, Q, D], token embeddings [T, L, D]) for terms
    # that compare tokens with patches (FSC-CLIP's local one); None: the family has no such embeddings.
    token_embeddings: Callable[..., tuple] | None = None

    @property
    def cls(self) -> type:
        return getattr(transformers, self.model_class)

    def collator_kwargs(self) -> dict:
        """`HncCollator` settings this family's text needs."""
        if self.text_padding == "max_length":
            return {"padding": "max_length", "omit_padding_mask": False}
        return {"padding": "longest", "omit_padding_mask": True}

    def embedding_dim(self, config) -> int:
        """The joint embedding's width: CLIP's `projection_dim`; SigLIP's text head width (= its vision width)."""
        dim = getattr(config, "projection_dim", None)
        return dim or getattr(config.text_config, "projection_size", None) or config.text_config.hidden_size

    def text_kwargs(self, max_length: int) -> dict:
        """Tokenizer arguments for encoding captions outside training (the evaluation encoder)."""
        padding = "max_length" if self.text_padding == "max_length" else True
        return {"padding": padding, "truncation": True, "max_length": max_length}


_CLIP = dict(
    contrastive="softmax", text_padding="longest", text_attention_mask=True, has_logit_bias=False,
    max_logit_scale=100.0, lora_targets=CLIP_LORA_TARGETS, text_prefixes=("text_model.", "text_projection."),
    vision_prefixes=("vision_model.", "visual_projection."), last_block=_clip_last_block,
    token_embeddings=_clip_token_embeddings,
)  # fmt: skip
_SIGLIP = dict(
    contrastive="sigmoid", text_padding="max_length", text_attention_mask=False, has_logit_bias=True,
    max_logit_scale=None, lora_targets=SIGLIP_LORA_TARGETS, text_prefixes=("text_model.",),
    vision_prefixes=("vision_model.",), last_block=_siglip_last_block,
)  # fmt: skip

# config.model_type → family.
MODEL_FAMILIES: dict[str, ModelFamily] = {
    "clip": ModelFamily("clip", "CLIPModel", **_CLIP),
    "metaclip_2": ModelFamily("metaclip_2", "MetaClip2Model", **_CLIP),
    "siglip": ModelFamily("siglip", "SiglipModel", **_SIGLIP),
    "siglip2": ModelFamily(
        "siglip2", "Siglip2Model", **_SIGLIP, pixel_inputs=("pixel_attention_mask", "spatial_shapes"),
        placeholder_pixels=_naflex_placeholder,
    ),
}  # fmt: skip

# Per-image inputs beside pixel_values of any family (the collator stacks them, GradCache splits them).
PIXEL_INPUTS = tuple(dict.fromkeys(k for f in MODEL_FAMILIES.values() for k in f.pixel_inputs))


class UnsupportedModelError(ValueError):
    """A checkpoint whose `model_type` is no family here."""


def family_of(model_or_config) -> ModelFamily:
    """The family of a model (possibly wrapped: peft, DDP, DeepSpeed, torch.compile) or of a config."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FAMILIES:
        inner = next((getattr(model_or_config, a) for a in ("module", "_orig_mod") if hasattr(model_or_config, a)),
                     None)
        if inner is not None:
            return family_of(inner)
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not a supported dual encoder; supported: {sorted(MODEL_FAMILIES)}"
        )
    return MODEL_FAMILIES[model_type]
