"""Run under `accelerate launch --cpu --num_processes 2` (gloo) by `tests/test_distributed.py`.

A fixed global batch of 8 (image, positive, negative) triples, split 4 + 4 over two processes, is trained one
backward step through DDP with the recipe's gathered local loss. Rank 0 also computes the loss and gradients of
one process holding the whole batch (an un-wrapped copy of the same model) and writes both to a JSON file.
Pairs 1 (rank 0) and 5 (rank 1) show the same image, so same-image masking across ranks is exercised.

Uneven splits too, as when pairs are dropped for unreadable images: 3 + 5 rows padded to blocks of 6, and 8 + none
(rank 1 holds only the placeholder pair); the reference is one process holding the union of the real rows. The
other families and layouts (NegCLIP, K = 3 negatives per pair, SigLIP's sigmoid, SigLIP 2 NaFlex's patch rows)
go through the same checks.
"""

from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist
from accelerate import Accelerator

from hnc_clip.data import image_group_id
from hnc_clip.forward import build_loss_inputs, placeholder_batch
from hnc_clip.gradcache import gradcache_backward
from hnc_clip.losses import LOSSES, LossConfig, total_loss
from hnc_clip.tiny import EOS_ID, build_tiny_clip, build_tiny_siglip, build_tiny_siglip2

G, L, VOCAB = 8, 7, 40


def global_batch() -> dict:
    g = torch.Generator().manual_seed(123)
    pixels = torch.randn(G, 3, 32, 32, generator=g)
    pixels[5] = pixels[1]  # the same image on both ranks
    ids = torch.randint(4, VOCAB, (2 * G, L), generator=g)
    ids[:, 0], ids[:, -1] = 2, EOS_ID  # BOS ... EOS
    names = [f"img{i}" for i in range(G)]
    names[5] = names[1]
    return {
        "pixel_values": pixels,
        "input_ids": ids,  # [positives; negatives]
        "attention_mask": torch.ones_like(ids),
        "image_ids": torch.tensor([image_group_id(n) for n in names]),
    }


def k_negative_batch(k: int = 3) -> dict:
    """`global_batch` with k hard negatives per pair: caption rows [positives; k blocks of G negatives]."""
    batch = global_batch()
    g = torch.Generator().manual_seed(321)
    extra = torch.randint(4, VOCAB, ((k - 1) * G, L), generator=g)
    extra[:, 0], extra[:, -1] = 2, EOS_ID
    batch["input_ids"] = torch.cat([batch["input_ids"], extra])
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    return batch


def missing_negative_batch(k: int = 3) -> dict:
    """`k_negative_batch` where some pairs lack negatives (plain captions no rule applied to): pair 2 has none,
    pair 6 only its first, pair 5 (rank 1, the image shared with pair 1) none; `negative_mask` [K·G] k-major."""
    batch = k_negative_batch(k)
    mask = torch.ones(k, G, dtype=torch.bool)
    mask[:, 2] = False
    mask[1:, 6] = False
    mask[:, 5] = False
    batch["negative_mask"] = mask.reshape(-1)
    return batch


def naflex_batch() -> dict:
    """`global_batch` with SigLIP 2 NaFlex images: 16 patch rows of 3·8² values each, grids of other shapes (the
    rows past h·w are padding), image 5 = image 1."""
    batch = global_batch()
    g = torch.Generator().manual_seed(7)
    grids = torch.tensor([[4, 4], [3, 5], [2, 8], [4, 4], [2, 7], [3, 5], [1, 16], [3, 4]])
    grids[5] = grids[1]
    pixels = torch.randn(G, 16, 3 * 8 * 8, generator=g)
    pixels[5] = pixels[1]
    mask = (torch.arange(16)[None, :] < grids.prod(1)[:, None]).to(torch.int32)  # [G, 16]
    return {**batch, "pixel_values": pixels * mask[..., None], "pixel_attention_mask": mask, "spatial_shapes": grids}


def local_slice(batch: dict, rank: int, world: int) -> dict:
    b = G // world
    return local_rows(batch, list(range(rank * b, (rank + 1) * b)))


def local_rows(batch: dict, rows: list[int]) -> dict:
    """The triples `rows` of the global batch (caption rows [positives; K blocks of G negatives]), as one process's
    inputs in the same layout."""
    rows = torch.tensor(rows, dtype=torch.long)
    blocks = batch["input_ids"].shape[0] // G  # positives, then the K blocks of negatives

    def per_block(t):
        return torch.cat([t[k * G : (k + 1) * G][rows] for k in range(blocks)])

    out = {
        "pixel_values": batch["pixel_values"][rows],
        "input_ids": per_block(batch["input_ids"]),
        "attention_mask": per_block(batch["attention_mask"]),
        "image_ids": batch["image_ids"][rows],
    }
    for k in ("pixel_attention_mask", "spatial_shapes"):  # NaFlex: per image, as pixel_values
        if k in batch:
            out[k] = batch[k][rows]
    if "negative_mask" in batch:
        mask = batch["negative_mask"]
        out["negative_mask"] = torch.cat([mask[k * G : (k + 1) * G][rows] for k in range(mask.numel() // G)])
    return out


# Cases that are a loss with settings of its own: name → (loss type, LossConfig fields).
LOSS_SETTINGS = {"fsc_clip_local": ("fsc_clip", {"fsc_local_weight": 0.2})}


def loss_and_config(case: str, contrastive: str = "softmax", state=None) -> tuple:
    """(the loss's spec, its LossConfig) for a loss type or a `LOSS_SETTINGS` case."""
    loss_type, settings = LOSS_SETTINGS.get(case, (case, {}))
    return LOSSES[loss_type].for_contrastive(contrastive), LossConfig(hard_negative_weight=0.7, state=state,
                                                                     **settings)  # fmt: skip


def loss_of(model, inputs, loss_type, rank, world, gather=True, contrastive="softmax", block=None, state=None):
    spec, cfg = loss_and_config(loss_type, contrastive, state)
    inp = build_loss_inputs(model, inputs, rank=rank, world_size=world if gather else 1, block=block,
                            with_tokens=spec.needs_tokens(cfg))  # fmt: skip
    return total_loss(spec.fn(inp, cfg), inp)


def carried_state(loss_type: str) -> dict | None:
    """CE-CLIP's thresholds from a previous step (margins for its rank term), updated by the call from the global
    batch; None for the losses that carry nothing."""
    if loss_type != "ce_clip":
        return None
    return {"ce_clip_thresholds": torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)}


def state_diff(a: dict | None, b: dict | None) -> dict:
    """The largest difference between the thresholds a distributed and a one-process call left ({} without)."""
    if a is None:
        return {}
    return {"state_diff": (a["ce_clip_thresholds"] - b["ce_clip_thresholds"]).abs().max().item()}


def tiny_clip():
    return build_tiny_clip(VOCAB, image_size=32, patch_size=8, hidden_size=32, projection_dim=16, seed=0).double()


def tiny_siglip():
    model = build_tiny_siglip(VOCAB, image_size=32, patch_size=8, hidden_size=32, seed=0).double()
    with torch.no_grad():  # from b = -10 every negative pair's term is ~e^-10: too small to tell the layouts apart
        model.logit_bias.fill_(-1.0)
    return model


def tiny_siglip2():
    model = build_tiny_siglip2(VOCAB, patch_size=8, max_num_patches=16, hidden_size=32, seed=0).double()
    with torch.no_grad():
        model.logit_bias.fill_(-1.0)
    return model


# name → (model, global batch, loss type, contrastive form): the other families and layouts, same checks.
FAMILY_CASES = {
    "negclip": (tiny_clip, global_batch, "negclip", "softmax"),
    "hnc_k3": (tiny_clip, k_negative_batch, "hnc", "softmax"),
    "siglip_clip": (tiny_siglip, global_batch, "clip", "sigmoid"),
    "siglip_hnc": (tiny_siglip, global_batch, "hnc", "sigmoid"),
    "siglip_hnc_k3": (tiny_siglip, k_negative_batch, "hnc", "sigmoid"),
    # pairs without (some of) their negatives: the mask travels with the gathered negatives
    "hnc_missing": (tiny_clip, missing_negative_batch, "hnc", "softmax"),
    "pairwise_missing": (tiny_clip, missing_negative_batch, "pairwise", "softmax"),
    "siglip_hnc_missing": (tiny_siglip, missing_negative_batch, "hnc", "sigmoid"),
    # FSC-CLIP's own-pair focal term, CE-CLIP's three terms and its thresholds over the gathered real rows
    "fsc_clip_missing": (tiny_clip, missing_negative_batch, "fsc_clip", "softmax"),
    "ce_clip_missing": (tiny_clip, missing_negative_batch, "ce_clip", "softmax"),
    # FSC-CLIP's local token–patch term: each pair's own tokens and patches, nothing gathered
    "fsc_clip_local": (tiny_clip, missing_negative_batch, "fsc_clip_local", "softmax"),
    # SigLIP 2 NaFlex: patch rows with their mask and grid; an empty process runs a placeholder in that layout
    "siglip2_naflex_hnc": (tiny_siglip2, naflex_batch, "hnc", "sigmoid"),
}


def compare(acc, build, batch, loss_type, contrastive, gather) -> dict | None:
    """One DDP backward of the local slices vs one process holding `batch`; the numbers on rank 0."""
    rank, world = acc.process_index, acc.num_processes
    model = build()
    single = copy.deepcopy(model)
    ddp = acc.prepare_model(model)
    state, single_state = carried_state(loss_type), carried_state(loss_type)
    loss = loss_of(ddp, local_slice(batch, rank, world), loss_type, rank, world, gather, contrastive, state=state)
    loss.backward()  # DDP averages the gradients over the processes
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    if rank != 0:
        return None
    full = loss_of(single, batch, loss_type, 0, 1, contrastive=contrastive, state=single_state)
    full.backward()
    pairs = [(p, q) for p, q in zip(ddp.module.parameters(), single.parameters()) if q.grad is not None]
    return {
        **state_diff(state, single_state),
        "distributed_loss": mean_loss.item(),
        "single_process_loss": full.item(),
        "max_grad_diff": max((p.grad - q.grad).abs().max().item() for p, q in pairs),
        "max_grad": max(q.grad.abs().max().item() for _, q in pairs),
    }


# rows of the global batch on (rank 0, rank 1); None: no readable pair (the placeholder)
UNEVEN = {"uneven": ([0, 1, 2], [3, 4, 5, 6, 7]), "empty": (list(range(G)), None)}
BLOCK = {"uneven": 6, "empty": G}


def uneven_case(acc, batch, loss_type, split, gradcache=False, build=None, contrastive="softmax") -> dict | None:
    rank, world = acc.process_index, acc.num_processes
    model = (build or tiny_clip)()
    single = copy.deepcopy(model)
    ddp = acc.prepare_model(model)
    mine = UNEVEN[split][rank]
    k = batch["input_ids"].shape[0] // G - 1  # negatives per pair: the placeholder brings as many
    masked = "negative_mask" in batch  # the placeholder then brings a mask too: every process gathers one
    inputs = local_rows(batch, mine) if mine is not None else placeholder_batch(ddp, "cpu", k, masked)
    state, single_state = carried_state(loss_type), carried_state(loss_type)
    if gradcache:
        spec, cfg = loss_and_config(loss_type, contrastive, state)
        loss, *_ = gradcache_backward(
            ddp, inputs, 2, spec.fn, cfg, rank=rank, world_size=world, block=BLOCK[split],
            real_rows=inputs.get("real_rows"), no_sync=lambda: acc.no_sync(ddp), with_tokens=spec.needs_tokens(cfg),
        )
    else:
        loss = loss_of(ddp, inputs, loss_type, rank, world, contrastive=contrastive, block=BLOCK[split], state=state)
        loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    if rank != 0:
        return None
    union = [r for part in UNEVEN[split] if part is not None for r in part]
    full = loss_of(single, local_rows(batch, union), loss_type, 0, 1, contrastive=contrastive, state=single_state)
    full.backward()
    return {
        **state_diff(state, single_state),
        "distributed_loss": mean_loss.item() / world,
        "single_process_loss": full.item(),
        "max_grad_diff": max((p.grad - q.grad).abs().max().item()
                             for p, q in zip(ddp.module.parameters(), single.parameters()) if q.grad is not None),
        "max_grad": max(q.grad.abs().max().item() for q in single.parameters() if q.grad is not None),
    }  # fmt: skip


def main(out_path: str) -> None:
    acc = Accelerator(cpu=True)
    rank, world = acc.process_index, acc.num_processes
    batch = global_batch()
    results = {}
    for loss_type in ("clip", "hnc", "pairwise"):
        for gather in (True, False):
            model = build_tiny_clip(VOCAB, image_size=32, patch_size=8, hidden_size=32, projection_dim=16, seed=0)
            model = model.double()
            single = copy.deepcopy(model)
            ddp = acc.prepare_model(model)
            loss = loss_of(ddp, local_slice(batch, rank, world), loss_type, rank, world, gather)
            loss.backward()  # DDP averages the gradients over the processes
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            mean_loss /= world
            if rank == 0:
                full = loss_of(single, {k: v for k, v in batch.items()}, loss_type, 0, 1)
                full.backward()
                diffs = [
                    (p.grad - q.grad).abs().max().item()
                    for p, q in zip(ddp.module.parameters(), single.parameters())
                    if q.grad is not None
                ]
                results[f"{loss_type}/{'gather' if gather else 'local'}"] = {
                    "distributed_loss": mean_loss.item(),
                    "single_process_loss": full.item(),
                    "max_grad_diff": max(diffs),
                    "max_grad": max(q.grad.abs().max().item() for q in single.parameters() if q.grad is not None),
                }
    for name, (build, make_batch, loss_type, contrastive) in FAMILY_CASES.items():
        for gather in (True, False):
            r = compare(acc, build, make_batch(), loss_type, contrastive, gather)
            if r is not None:
                results[f"{name}/{'gather' if gather else 'local'}"] = r
    # GradCache under DDP: each process splits its 4 pairs into chunks of 2; still the global-batch gradient.
    model = build_tiny_clip(VOCAB, image_size=32, patch_size=8, hidden_size=32, projection_dim=16, seed=0).double()
    single = copy.deepcopy(model)
    ddp = acc.prepare_model(model)
    loss, *_ = gradcache_backward(
        ddp, local_slice(batch, rank, world), 2, LOSSES["hnc"].fn, LossConfig(hard_negative_weight=0.7),
        rank=rank, world_size=world, no_sync=lambda: acc.no_sync(ddp),
    )
    mean_loss = loss.clone()
    dist.all_reduce(mean_loss)
    if rank == 0:
        full = loss_of(single, batch, "hnc", 0, 1)
        full.backward()
        results["hnc/gradcache"] = {
            "distributed_loss": mean_loss.item() / world,
            "single_process_loss": full.item(),
            "max_grad_diff": max(
                (p.grad - q.grad).abs().max().item() for p, q in zip(ddp.module.parameters(), single.parameters())
            ),
        }
    for split in UNEVEN:
        for loss_type in ("clip", "hnc", "pairwise", "thesis_l2"):
            results[f"{loss_type}/{split}"] = uneven_case(acc, batch, loss_type, split)
        results[f"hnc/gradcache_{split}"] = uneven_case(acc, batch, "hnc", split, gradcache=True)
        results[f"fsc_clip_local/gradcache_{split}"] = uneven_case(acc, missing_negative_batch(), "fsc_clip_local",
                                                                   split, gradcache=True)  # fmt: skip
        # the padded layouts of the other families: K blocks of negatives, SigLIP's sigmoid over padded columns
        for name, (build, make_batch, loss_type, contrastive) in FAMILY_CASES.items():
            results[f"{name}/{split}"] = uneven_case(acc, make_batch(), loss_type, split, build=build,
                                                     contrastive=contrastive)  # fmt: skip
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    acc.wait_for_everyone()
    dist.destroy_process_group()  # before exit: see hnc_clip.peers.shutdown_distributed


if __name__ == "__main__":
    main(sys.argv[1])
