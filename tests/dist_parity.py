"""Run under `accelerate launch --cpu --num_processes 2` (gloo) by `tests/test_distributed.py`.

A fixed global batch of 8 (image, positive, negative) triples, split 4 + 4 over two processes, is trained one
backward step through DDP with the recipe's gathered local loss. Rank 0 also computes the loss and gradients of
one process holding the whole batch (an un-wrapped copy of the same model) and writes both to a JSON file.
Pairs 1 (rank 0) and 5 (rank 1) show the same image, so same-image masking across ranks is exercised.

Uneven splits too, as when pairs are dropped for unreadable images: 3 + 5 rows padded to blocks of 6, and 8 + none
(rank 1 holds only the placeholder pair); the reference is one process holding the union of the real rows.
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
from hnc_clip.tiny import EOS_ID, build_tiny_clip

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


def local_slice(batch: dict, rank: int, world: int) -> dict:
    b = G // world
    return local_rows(batch, list(range(rank * b, (rank + 1) * b)))


def local_rows(batch: dict, rows: list[int]) -> dict:
    """The (image, positive, negative) triples `rows` of the global batch, as one process's inputs."""
    rows = torch.tensor(rows, dtype=torch.long)
    pos, neg = batch["input_ids"][:G], batch["input_ids"][G:]
    am_pos, am_neg = batch["attention_mask"][:G], batch["attention_mask"][G:]
    return {
        "pixel_values": batch["pixel_values"][rows],
        "input_ids": torch.cat([pos[rows], neg[rows]]),
        "attention_mask": torch.cat([am_pos[rows], am_neg[rows]]),
        "image_ids": batch["image_ids"][rows],
    }


def loss_of(model, inputs, loss_type, rank, world, gather=True, block=None):
    inp = build_loss_inputs(model, inputs, rank=rank, world_size=world if gather else 1, block=block)
    out = LOSSES[loss_type].fn(inp, LossConfig(hard_negative_weight=0.7))
    return total_loss(out, inp)


# rows of the global batch on (rank 0, rank 1); None: no readable pair (the placeholder)
UNEVEN = {"uneven": ([0, 1, 2], [3, 4, 5, 6, 7]), "empty": (list(range(G)), None)}
BLOCK = {"uneven": 6, "empty": G}


def tiny_double():
    return build_tiny_clip(VOCAB, image_size=32, patch_size=8, hidden_size=32, projection_dim=16, seed=0).double()


def uneven_case(acc, batch, loss_type, split, gradcache=False) -> dict | None:
    rank, world = acc.process_index, acc.num_processes
    model = tiny_double()
    single = copy.deepcopy(model)
    ddp = acc.prepare_model(model)
    mine = UNEVEN[split][rank]
    inputs = local_rows(batch, mine) if mine is not None else placeholder_batch(ddp, "cpu")
    if gradcache:
        loss, *_ = gradcache_backward(
            ddp, inputs, 2, LOSSES[loss_type].fn, LossConfig(hard_negative_weight=0.7), rank=rank,
            world_size=world, block=BLOCK[split], real_rows=inputs.get("real_rows"), no_sync=lambda: acc.no_sync(ddp),
        )
    else:
        loss = loss_of(ddp, inputs, loss_type, rank, world, block=BLOCK[split])
        loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    if rank != 0:
        return None
    union = [r for part in UNEVEN[split] if part is not None for r in part]
    full = loss_of(single, local_rows(batch, union), loss_type, 0, 1)
    full.backward()
    return {
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
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    acc.wait_for_everyone()
    dist.destroy_process_group()  # before exit: see hnc_clip.scripts.train.shutdown_distributed


if __name__ == "__main__":
    main(sys.argv[1])
