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
from .losses import (
    Embeddings,
    LossConfig,
    LossInputs,
    TokenEmbeddings,
    gather_features,
    gather_sizes,
    process_share,
    total_loss,
)
from .modeling import unwrap_clip


def split_batch(inputs: dict, chunk_size: int) -> list[dict]:
    """Split a collated batch (texts laid out [positives; K blocks of negatives]) into chunks of `chunk_size`
    pairs."""
    # Back to one image and two caption rows per pair (the collator stores each distinct one once): chunks are
    # encoded independently.
    pixels, ids = inputs["pixel_values"], inputs["input_ids"]
    # Split even where the text tower gets no mask (`embed` drops it): token embeddings read it for the padding.
    mask = inputs.get("attention_mask")
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


# What step 1 caches, by name: k-major tensors hold K blocks of the batch's rows ([K·B, ...]); the others [B, ...].
K_MAJOR = ("negative", "negative_tokens", "negative_token_mask")
DIFFERENTIABLE = ("image", "positive", "negative", "image_tokens", "positive_tokens", "negative_tokens")


def _tensors(e: Embeddings) -> dict[str, torch.Tensor]:
    """An embedding's tensors by name (those it has; the token embeddings when asked)."""
    out = {"image": e.image, "positive": e.positive}
    if e.negative is not None:
        out["negative"] = e.negative
    if e.tokens is not None:
        t = e.tokens
        out.update(image_tokens=t.image, positive_tokens=t.positive, negative_tokens=t.negative,
                   positive_token_mask=t.positive_mask, negative_token_mask=t.negative_mask)  # fmt: skip
    return out


def _concat(chunks: list[torch.Tensor], sizes: list[int], k_major: bool) -> torch.Tensor:
    """The chunks' rows as one batch's: [B, ...]; k-major chunks ([K·n, ...], n = `sizes` pairs) → [K·B, ...] with
    slot k's rows of every chunk together, as `Embeddings` lays out a batch's negatives."""
    if not k_major:
        return torch.cat(chunks)
    k = chunks[0].shape[0] // sizes[0]
    blocks = torch.cat([c.view(k, n, *c.shape[1:]) for c, n in zip(chunks, sizes)], dim=1)  # [K, B, ...]
    return blocks.reshape(-1, *blocks.shape[2:])


def _rows(t: torch.Tensor, start: int, n: int, b: int, k_major: bool) -> torch.Tensor:
    """A chunk's rows [start, start + n) of a batch tensor: [n, ...], or [K·n, ...] of a k-major one."""
    if not k_major:
        return t[start : start + n]
    return t.view(-1, b, *t.shape[1:])[:, start : start + n].reshape(-1, *t.shape[1:])


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
    with_tokens: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], Embeddings, torch.Tensor, torch.Tensor | None]:
    """Run steps 1–3 above; parameter `.grad`s are accumulated (scaled by `loss_scale`). Returns the loss
    (detached, weighted by this process's share: `hnc_clip.losses.total_loss`), its components, the local
    embeddings, the clamped logit scale used (for statistics) and the real rows of every process ([W], or None
    with one process).

    `gather`, `block`, `real_rows`: as `hnc_clip.forward.build_loss_inputs` (uneven and placeholder batches).
    `no_sync`: under DDP, `lambda: model.no_sync()`, so gradients are all-reduced once, after the last chunk.
    `with_negatives=False`: the hard negatives are not encoded (for losses that use none, such as `clip`).
    `with_tokens`: the token embeddings too (cached as the others: B·(Q + (1+K)·L)·D more floats).
    """
    chunks = split_batch(inputs, chunk_size)
    no_sync = no_sync or contextlib.nullcontext

    # 1. embeddings without activations
    with torch.no_grad():
        parts = [_tensors(embed(model, c, with_negatives, with_tokens)) for c in chunks]
    # Row-major tensors concatenate over the chunks; k-major ones (the negatives) per slot k, over the whole batch.
    sizes = [c["pixel_values"].shape[0] for c in chunks]
    leaves = {name: _concat([p[name] for p in parts], sizes, name in K_MAJOR).detach() for name in parts[0]}
    for name in DIFFERENTIABLE:
        if name in leaves:
            leaves[name].requires_grad_()

    def as_embeddings(t: dict[str, torch.Tensor]) -> Embeddings:
        mask = inputs.get("negative_mask") if "negative" in t else None  # [K·B] bool, k-major over the whole batch
        tokens = None
        if "image_tokens" in t:
            tokens = TokenEmbeddings(t["image_tokens"], t["positive_tokens"], t["negative_tokens"],
                                     t["positive_token_mask"], t["negative_token_mask"])  # fmt: skip
        return Embeddings(t["image"], t["positive"], t.get("negative"), inputs.get("image_ids"), negative_mask=mask,
                          tokens=tokens)  # fmt: skip

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
    grads = {name: leaves[name].grad for name in DIFFERENTIABLE if name in leaves}  # row- or k-major, as the leaves
    b = leaves["image"].shape[0]

    # 3. re-embed chunk by chunk with activations; backprop the cached embedding gradients
    start = 0
    for i, chunk in enumerate(chunks):
        n = chunk["pixel_values"].shape[0]
        last = i == len(chunks) - 1
        with contextlib.nullcontext() if last else no_sync():
            e = _tensors(embed(model, chunk, with_negatives, with_tokens))
            surrogate = sum((e[name] * _rows(g, start, n, b, name in K_MAJOR)).sum()
                            for name, g in grads.items() if g is not None)  # fmt: skip
            # logit_scale (and SigLIP's logit_bias) took its gradient in step 2; the zero term marks it used in this
            # graph too, so DDP (without find_unused_parameters) reduces it with the rest on the last chunk.
            surrogate = surrogate + 0.0 * clip.logit_scale.sum()
            if inp.logit_bias is not None:
                surrogate = surrogate + 0.0 * clip.logit_bias.sum()
            surrogate.backward()
        start += n
    local = as_embeddings({name: leaf.detach() for name, leaf in leaves.items()})
    return loss.detach(), {k: v.detach() for k, v in components.items()}, local, scale.detach(), rows
