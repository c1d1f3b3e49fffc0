"""Contrastive-aware gradient accumulation (GradCache; Gao et al. 2021, open_clip `--accum-freq`).

Plain gradient accumulation over k micro-batches adds no negatives: each micro-batch's loss sees only its own
B/k pairs. Here the loss is computed over the whole batch while activations are only ever held for one chunk:

1. embed every chunk with no graph                                  → E [B, D] (image, positive, negative)
2. compute the loss on E (as leaf tensors), backward to E only       → ∂L/∂E, and ∂L/∂logit_scale
3. for each chunk: re-embed with graph and backward ⟨E_chunk, ∂L/∂E_chunk⟩, accumulating parameter gradients.

By the chain rule the parameter gradients equal those of one backward through the full batch (exact when the
forward is deterministic; CLIP has no dropout by default). Memory: activations of one chunk + B·D embeddings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from .families import PIXEL_INPUTS
from .forward import clamped_logit_scale, embed, model_logit_bias
from .losses import Embeddings, LossConfig, LossInputs, gather_features, gather_sizes, process_share, total_loss
from .modeling import unwrap_clip


def split_batch(inputs: dict, chunk_size: int) -> list[dict]:
    """Split a collated batch (texts laid out [positives; K blocks of negatives]) into chunks of `chunk_size`
    pairs."""
    # Back to one image and two caption rows per pair (the collator stores each distinct one once): chunks are
    # encoded independently.
    pixels, ids = inputs["pixel_values"], inputs["input_ids"]
    # Right-padded captions reach the causal text tower without their mask (`embed`): no need to split it.
    mask = None if inputs.get("right_padded") else inputs["attention_mask"]
    extras = {k: inputs[k] for k in PIXEL_INPUTS if inputs.get(k) is not None}  # per image, as pixel_values
    if inputs.get("image_index") is not None:
        pixels = pixels[inputs["image_index"]]
        extras = {k: v[inputs["image_index"]] for k, v in extras.items()}
    if inputs.get("text_index") is not None:
        ids = ids[inputs["text_index"]]
        mask = mask[inputs["text_index"]] if mask is not None else None
    b = pixels.shape[0]
    blocks = ids.shape[0] // b  # 1 + K: positives, then K blocks of negatives (or 1: positives only)

    def pair_rows(t: torch.Tensor | None, rows: slice) -> torch.Tensor | None:  # [positives; negatives] of `rows`
        return None if t is None else torch.cat([t[k * b : (k + 1) * b][rows] for k in range(blocks)])

    chunks = []
    for start in range(0, b, chunk_size):
        rows = slice(start, start + chunk_size)
        chunks.append(
            {
                **{k: v[rows] for k, v in extras.items()},
                "pixel_values": pixels[rows],
                "input_ids": pair_rows(ids, rows),
                "attention_mask": pair_rows(mask, rows),
                "pixel_affine": inputs.get("pixel_affine"),  # uint8 pixels are normalised per chunk
                "right_padded": inputs.get("right_padded", False),
            }
        )
    return chunks


def gradcache_backward(
    model,
    inputs: dict,
    chunk_size: int,
    loss_fn: Callable[[LossInputs, LossConfig], dict[str, torch.Tensor]],
    cfg: LossConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    gather: bool = True,
    block: int | None = None,
    real_rows: int | None = None,
    max_logit_scale: float | None = 100.0,
    loss_scale: float = 1.0,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    with_negatives: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], Embeddings, torch.Tensor, torch.Tensor | None]:
    """Run steps 1–3 above; parameter `.grad`s are accumulated (scaled by `loss_scale`). Returns the loss
    (detached, weighted by this process's share: `hnc_clip.losses.total_loss`), its components, the local
    embeddings, the clamped logit scale used (for statistics) and the real rows of every process ([W], or None
    with one process).

    `gather`, `block`, `real_rows`: as `hnc_clip.forward.build_loss_inputs` (uneven and placeholder batches).
    `no_sync`: under DDP, `lambda: model.no_sync()`, so gradients are all-reduced once, after the last chunk.
    `with_negatives=False`: the hard negatives are not encoded (for losses that use none, such as `clip`).
    """
    chunks = split_batch(inputs, chunk_size)
    no_sync = no_sync or contextlib.nullcontext

    # 1. embeddings without activations
    with torch.no_grad():
        parts = [embed(model, c, with_negatives) for c in chunks]
    kinds = ("image", "positive", "negative") if with_negatives else ("image", "positive")
    leaves = [torch.cat([getattr(p, k) for p in parts]).detach().requires_grad_() for k in kinds[:2]]  # [B, D]
    if with_negatives:  # K per pair, k-major over the whole batch (`Embeddings`), not chunk by chunk
        negatives = torch.cat([p.own_negatives() for p in parts], dim=1)  # [K, B, D]
        leaves.append(negatives.reshape(-1, negatives.shape[-1]).detach().requires_grad_())  # [K·B, D]

    def as_embeddings(tensors: list[torch.Tensor]) -> Embeddings:  # image, positive[, negative]
        image, positive, *negative = tensors
        mask = inputs.get("negative_mask") if negative else None  # [K·B] bool, k-major over the whole batch
        return Embeddings(image, positive, negative[0] if negative else None, inputs.get("image_ids"),
                          negative_mask=mask)  # fmt: skip

    local = as_embeddings(leaves)

    # 2. loss over the whole (gathered) batch; backward stops at the embedding leaves (and logit_scale)
    clip = unwrap_clip(model)
    with no_sync():
        scale = clamped_logit_scale(clip, max_logit_scale)
        real = len(local) if real_rows is None else real_rows
        if world_size > 1 and gather:
            everywhere = gather_features(local, rank, world_size, block, real)
            rows, label_rank = everywhere.rows, rank
        else:
            everywhere, label_rank = local, 0
            rows = gather_sizes(len(local), real, local.image.device, world_size)[:, 1] if world_size > 1 else None
        share = process_share(rows, rank) if rows is not None else None
        bias = model_logit_bias(clip)
        inp = LossInputs(local, everywhere, scale, label_rank, rows=rows, share=share, logit_bias=bias)
        components = loss_fn(inp, cfg)
        loss = total_loss(components, inp)
        (loss * loss_scale).backward()
    grads = [leaf.grad for leaf in leaves]  # [B, D], [B, D], [K·B, D]
    b = leaves[0].shape[0]

    # 3. re-embed chunk by chunk with activations; backprop the cached embedding gradients
    start = 0
    for i, chunk in enumerate(chunks):
        n = chunk["pixel_values"].shape[0]
        last = i == len(chunks) - 1
        with contextlib.nullcontext() if last else no_sync():
            e = embed(model, chunk, with_negatives)
            embs = (e.image, e.positive, e.negative)[: len(grads)]
            parts = [g[start : start + n] if g is not None else None for g in grads[:2]]  # [n, D]
            if len(grads) == 3 and grads[2] is not None:  # this chunk's negatives of each block k: [K·n, D]
                g = grads[2]
                parts.append(g.view(-1, b, g.shape[-1])[:, start : start + n].reshape(-1, g.shape[-1]))
            surrogate = sum((x * g).sum() for x, g in zip(embs, parts) if g is not None)
            # logit_scale (and SigLIP's logit_bias) took its gradient in step 2; the zero term marks it used in this
            # graph too, so DDP (without find_unused_parameters) reduces it with the rest on the last chunk.
            surrogate = surrogate + 0.0 * clip.logit_scale.sum()
            if inp.logit_bias is not None:
                surrogate = surrogate + 0.0 * clip.logit_bias.sum()
            surrogate.backward()
        start += n
    local = as_embeddings([leaf.detach() for leaf in leaves])
    return loss.detach(), {k: v.detach() for k, v in components.items()}, local, scale.detach(), rows
