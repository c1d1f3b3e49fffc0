"""The forward pass shared by the trainer and GradCache: embed a collated batch and package it for a loss."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .families import family_of
from .losses import Embeddings, LossInputs, TokenEmbeddings, gather_features, gather_sizes, process_share
from .modeling import LogitScaleTap, logit_bias, unwrap_clip


def normalize_pixels(pixels: torch.Tensor, affine: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """uint8 pixels [U, H, W, 3] (channels last, as the image cache stores them) → normalised [U, 3, H, W] in
    `dtype`, as `x·a − b` with `affine` = [a; b], [2, 3]. The same float32 multiply then subtract as
    `CachedImageJoin` on the CPU, so both paths give the same numbers. Float pixels pass through unchanged.
    """
    if torch.is_floating_point(pixels):
        return pixels
    if affine is None:
        raise ValueError("uint8 pixel_values need the inputs' `pixel_affine` (HncCollator(pixel_affine=...))")
    a, b = affine.float()[:, :, None, None]  # [3, 1, 1] each
    return (pixels.permute(0, 3, 1, 2).float() * a - b).to(dtype)


class PositiveRows(NamedTuple):
    rows: slice | torch.Tensor  # the input_ids rows of the distinct positive captions
    index: torch.Tensor | None  # [B] pair i's positive among them (None: row i)


def positive_caption_rows(inputs: dict) -> PositiveRows:
    """Which caption rows a positives-only forward encodes. `HncCollator` numbers the distinct captions positives
    first and says how many (`positive_captions`), so they are the first rows and `text_index[:B]` already points
    into them; without that, a `torch.unique`, which on a GPU waits for it (the output size is data-dependent)."""
    text_index = inputs.get("text_index")
    if text_index is None:  # one image and one caption row per pair: [positives; negatives]
        return PositiveRows(slice(0, inputs["pixel_values"].shape[0]), None)
    # B pairs: one image row each (K negatives per pair make text_index [(1 + K)·B]).
    b = inputs["image_index"].shape[0] if inputs.get("image_index") is not None else text_index.shape[0] // 2
    if inputs.get("positive_captions") is not None:
        return PositiveRows(slice(0, inputs["positive_captions"]), text_index[:b])
    needed, index = torch.unique(text_index[:b], return_inverse=True)  # [T'], [B]
    return PositiveRows(needed, index)


def embed(model, inputs: dict, with_negatives: bool = True, with_tokens: bool = False) -> Embeddings:
    """One forward over the images and the captions ([positives; negatives]); returns L2-normalised embeddings.

    Called through the (possibly DDP/DeepSpeed-wrapped) model's `__call__`, so wrappers see a normal forward.
    `with_negatives=False` encodes the positives only (for losses that use no hard negative, such as `clip`).
    `with_tokens`: also the per-patch and per-token embeddings (`TokenEmbeddings`, FSC-CLIP's local term).
    """
    ids, mask, text_index = inputs["input_ids"], inputs.get("attention_mask"), inputs.get("text_index")
    inner = unwrap_clip(model)
    if with_tokens and not with_negatives:
        raise ValueError("token embeddings are for terms over a pair's own captions: encode the negatives too")
    token_mask = _caption_token_mask(inputs) if with_tokens else None
    if inputs.get("right_padded") or not family_of(inner).text_attention_mask:
        # Causal text tower pooled at EOS + right padding: the mask is redundant (see HncCollator.omit_padding_mask);
        # SigLIP was trained without one (`hnc_clip.families`).
        mask = None
    if not with_negatives:
        positives = positive_caption_rows(inputs)
        ids = ids[positives.rows]
        mask = mask[positives.rows] if mask is not None else None
        text_index = positives.index
    pixels = inputs["pixel_values"]
    if not torch.is_floating_point(pixels):  # uint8 rows from the image cache
        # fp32 under autocast; the engine's dtype (bf16) when DeepSpeed holds the weights in it.
        dtype = inner.vision_model.embeddings.patch_embedding.weight.dtype
        pixels = normalize_pixels(pixels, inputs.get("pixel_affine"), dtype)
    extra = {k: inputs[k] for k in family_of(inner).pixel_inputs if k in inputs}  # NaFlex: patch mask and grid
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, **extra)
    image = out.image_embeds  # [U, D]: each distinct image once
    if inputs.get("image_index") is not None:
        image = image[inputs["image_index"]]  # [B, D]; the backward sums the rows of a shared image
    b = image.shape[0]
    text = out.text_embeds  # [T, D]: each distinct caption once
    if text_index is not None:
        # [(1 + K)·B, D] = [positives; negatives 1; ...; negatives K] (or [B, D], positives only)
        text = text[text_index]
    negative = text[b:] if with_negatives else None
    mask = inputs.get("negative_mask") if with_negatives else None  # [K·B] bool: pairs without a k-th negative
    tokens = _token_embeddings(inner, out, inputs, token_mask) if with_tokens else None
    return Embeddings(image, text[:b], negative, inputs.get("image_ids"), negative_mask=mask,
                      tokens=tokens)  # [B, D] each  # fmt: skip


def _caption_token_mask(inputs: dict) -> torch.Tensor:
    """[T, L] bool: a caption row's own tokens, the start token excluded (as FSC-CLIP's `attn_mask`)."""
    mask = inputs.get("attention_mask")
    if mask is None:
        raise ValueError("token embeddings need the batch's attention_mask (which tokens of a row are padding)")
    mask = mask.bool().clone()
    mask[:, 0] = False
    return mask


def _token_embeddings(inner, out, inputs: dict, token_mask: torch.Tensor) -> TokenEmbeddings:
    family = family_of(inner)
    if family.token_embeddings is None:
        raise ValueError(f"a {family.name} model has no per-patch and per-token embeddings in its joint space")
    patches, tokens = family.token_embeddings(inner, out)  # [U, Q, D], [T, L, D]
    if inputs.get("image_index") is not None:
        patches = patches[inputs["image_index"]]  # [B, Q, D]
    text_index = inputs.get("text_index")
    if text_index is not None:
        tokens, token_mask = tokens[text_index], token_mask[text_index]  # [(1+K)·B, L, D], [(1+K)·B, L]
    b = patches.shape[0]
    return TokenEmbeddings(patches, tokens[:b], tokens[b:], token_mask[:b], token_mask[b:])


def placeholder_batch(model, device, negatives: int = 1, negative_mask: bool = False) -> dict:
    """One stand-in pair for a process whose batch has no readable image (`real_rows` 0), in `HncCollator`'s
    layout. Under several processes every one must run what the others run — the forward (DDP), the gathers of the
    loss and the finite check — or the collectives mismatch (gloo aborts, NCCL hangs). Its loss is weighted 0
    (`process_share`) and the other processes mask its column (`get_logits`), so it changes nothing. `negatives`:
    the K every pair of the run brings (the gathers need the same layout everywhere); `negative_mask`: whether the
run's batches carry one (`HncCollator.allow_missing_negatives`), so that every process gathers it."""
    clip = unwrap_clip(model)
    config = clip.config
    dtype = clip.vision_model.embeddings.patch_embedding.weight.dtype  # float pixels reach the model as they are
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    ids[0, 1].fill_(min(config.text_config.eos_token_id, config.text_config.vocab_size - 1))  # [BOS-ish, EOS]
    zero = torch.zeros(1, dtype=torch.long, device=device)
    extra = {"negative_mask": torch.ones(negatives, dtype=torch.bool, device=device)} if negative_mask else {}
    return {
        **extra,
        **family_of(clip).placeholder_pixels(config, dtype, device),  # NaFlex: patch rows, their mask and grid
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "image_index": zero,
        "text_index": torch.zeros(1 + negatives, dtype=torch.long, device=device),  # [positive; K negatives]
        "positive_captions": 1,
        "image_ids": zero,
        "right_padded": True,
        "real_rows": 0,
    }


def clamped_logit_scale(model, max_logit_scale: float | None, tap: LogitScaleTap | None = None) -> torch.Tensor:
    """exp(logit_scale) clamped at `max_logit_scale` (0-dim; None: unclamped). `tap`: a `LogitScaleTap` on the
    model, whose value is read instead of the parameter (under ZeRO-3 the parameter is a shard outside the
    forward)."""
    value = tap.value if tap is not None else unwrap_clip(model).logit_scale.exp().reshape(())
    return value if max_logit_scale is None else value.clamp(max=max_logit_scale)


def model_logit_bias(model, tap: LogitScaleTap | None = None) -> torch.Tensor | None:
    """The learned logit bias (0-dim; SigLIP) as the tap captured it, or None for a family without one."""
    return tap.bias if tap is not None else logit_bias(model)


def build_loss_inputs(
    model,
    inputs: dict,
    *,
    rank: int = 0,
    world_size: int = 1,
    gather: bool = True,
    block: int | None = None,
    max_logit_scale: float | None = 100.0,
    reference_model=None,
    theta0: list | None = None,
    taps: tuple[LogitScaleTap | None, LogitScaleTap | None] = (None, None),
    with_negatives: bool = True,
    with_tokens: bool = False,
) -> LossInputs:
    """Embed a batch, gather it across `world_size` processes and package it for a loss.

    `gather` False: each process's loss sees only its own rows (the per-device loss); with several processes the
    real rows are still counted everywhere, for the weights. `block`: the rows every process pads to (see
    `gather_features`). `taps`: `LogitScaleTap`s on the model and the reference (needed under ZeRO-3; else the
    parameter is read). `inputs["real_rows"]` (a placeholder's 0) overrides the row count. `with_tokens`: the local
    rows' token embeddings too (never gathered: `TokenEmbeddings`).
    """

    local = embed(model, inputs, with_negatives, with_tokens)
    real_rows = inputs.get("real_rows")
    gathering = world_size > 1 and gather

    def spread(emb: Embeddings) -> Embeddings:
        return gather_features(emb, rank, world_size, block, real_rows) if gathering else emb

    everywhere = spread(local)
    rows = None
    if gathering:
        rows = everywhere.rows
    elif world_size > 1:
        rows = gather_sizes(len(local), len(local) if real_rows is None else real_rows, local.image.device,
                            world_size)[:, 1]  # fmt: skip
    share = process_share(rows, rank) if rows is not None else None
    rank = rank if gathering else 0
    scale = clamped_logit_scale(model, max_logit_scale, taps[0])
    bias = model_logit_bias(model, taps[0])
    reference = None
    if reference_model is not None:
        with torch.no_grad():
            ref_local = embed(reference_model, inputs, with_negatives)
            ref_scale = clamped_logit_scale(reference_model, max_logit_scale, taps[1])
            reference = LossInputs(ref_local, spread(ref_local), ref_scale, rank,
                                   logit_bias=model_logit_bias(reference_model, taps[1]))  # fmt: skip
    sq_dist = None
    if theta0 is not None:
        # ‖θ−θ₀‖² = Σᵢ ‖θᵢ−θ₀ᵢ‖², with one multi-tensor kernel per op (as torch's optimizers and grad clipping do)
        # instead of three kernels per parameter tensor; the norm's backward is 0 at θ = θ₀, as the square's.
        params = [p for p, _ in theta0]
        initial = [p0.to(p.device) for p, p0 in theta0]
        sq_dist = torch.stack(torch._foreach_norm(torch._foreach_sub(params, initial))).pow(2).sum()
    return LossInputs(local, everywhere, scale, rank, reference, sq_dist, rows=rows, share=share, logit_bias=bias)
