"""What every loss step of `HncTrainer` records, whichever way its loss is computed (one forward, GradCache, or at
evaluation): the batch's counts, a batch without a readable image, the pairs scored, the logged values and, in
training, the hand-over to `StepGuard` (`hnc_clip.callbacks`), which records them once the step is accepted.

    run_loss_step(trainer, model, inputs, mode, loss)   `loss(model, inputs, cfg) -> StepLoss` computes the loss

The trainer passes itself (as `StepGuard` takes it); this module never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .data.batches import pop_counts
from .forward import placeholder_batch
from .losses import Embeddings, LossConfig, step_metrics


class StepLoss(NamedTuple):
    loss: torch.Tensor  # what the step returns (weighted by this process's share under several processes)
    components: dict[str, torch.Tensor]
    local: Embeddings  # this process's rows
    logit_scale: torch.Tensor  # 0-dim, clamped
    rows: torch.Tensor | None  # [W] every process's real rows; None with one process


def stand_in_batch(trainer, model) -> dict | None:
    """For a batch without a readable image: None with one process (the step is skipped), else the placeholder
    pair that keeps this process in the collectives the others enter (`hnc_clip.forward.placeholder_batch`)."""
    if trainer.accelerator.num_processes == 1:
        return None
    collator = trainer.data_collator
    k = getattr(collator, "negatives_per_row", None) or 1
    return placeholder_batch(model, trainer.args.device, k, getattr(collator, "allow_missing_negatives", False))


def run_loss_step(
    trainer, model, inputs: dict, mode: str, loss: Callable[[object, dict, LossConfig], StepLoss]
) -> StepLoss | None:
    """Record `inputs`' counts, compute `loss` and record the step in `trainer`'s ledger (`mode` "eval") or hold it
    for `trainer.step_guard` ("train"). None: the batch had no readable image and the step is skipped (one
    process); the caller returns a loss without effect."""
    training = mode == "train"
    ledger = trainer.ledger
    ledger.add_counts(mode, pop_counts(inputs))
    if inputs["pixel_values"].shape[0] == 0:  # every image of this batch was unreadable
        inputs = stand_in_batch(trainer, model)
        if inputs is None:
            if training:
                trainer.step_guard.note_rows(0)
            return None
    cfg = trainer.loss_config(training)
    out = loss(model, inputs, cfg)
    rows = inputs.get("real_rows", len(out.local))  # this process's real pairs
    ledger.add(mode, "pairs", rows)
    metrics = step_metrics(out.components, out.local, cfg, out.logit_scale)
    weight = rows / trainer._block(training)
    if training:  # settled in training_step, after the backward is launched
        all_rows = out.rows.sum() if out.rows is not None else rows
        trainer.step_guard.hold(out.loss, out.components, metrics, weight, all_rows)
    else:
        ledger.add_all("eval", metrics, weight=weight)
        ledger.add("eval", "loss", torch.stack(list(out.components.values())).sum(), weight=weight)
    return out
