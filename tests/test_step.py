"""`hnc_clip.step.run_loss_step`: what every loss step records, on a stand-in trainer (no model, no Trainer)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hnc_clip.ledger import MetricLedger
from hnc_clip.losses import Embeddings, LossConfig
from hnc_clip.step import StepLoss, run_loss_step

BLOCK = 4  # pairs of a full batch


class Guard:
    """What `StepGuard` is handed: rows of skipped micro-steps, and the held step."""

    def __init__(self):
        self.rows, self.held = [], None

    def note_rows(self, rows):
        self.rows.append(rows)

    def hold(self, loss, components, metrics, weight, rows):
        self.held = SimpleNamespace(loss=loss, components=components, metrics=metrics, weight=weight, rows=rows)


def stand_in_trainer():
    return SimpleNamespace(accelerator=SimpleNamespace(num_processes=1), ledger=MetricLedger(), step_guard=Guard(),
                           loss_config=lambda training: LossConfig(hard_negative_weight=0.5),
                           _block=lambda training: BLOCK)  # fmt: skip


def batch(pairs: int, skipped: int) -> dict:
    return {"pixel_values": torch.zeros(pairs, 3, 2, 2), "skipped_images": skipped, "counts": {}}


def loss_of(pairs: int, calls: list):
    def loss(model, inputs, cfg):
        calls.append(inputs)
        g = torch.Generator().manual_seed(0)
        image, positive, negative = (F.normalize(torch.randn(pairs, 8, generator=g), dim=-1) for _ in range(3))
        components = {"contrastive_loss": torch.tensor(1.25), "hard_negative_loss": torch.tensor(0.5)}
        return StepLoss(torch.tensor(1.75), components, Embeddings(image, positive, negative), torch.tensor(20.0),
                        None)  # fmt: skip

    return loss


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_batch_without_a_readable_image_on_one_process_is_skipped_unscored(mode):
    trainer, calls = stand_in_trainer(), []
    assert run_loss_step(trainer, None, batch(0, skipped=3), mode, loss_of(1, calls)) is None
    assert calls == []  # no forward
    assert trainer.step_guard.rows == ([0] if mode == "train" else [])  # a training micro-step without rows
    assert trainer.step_guard.held is None
    recorded = trainer.ledger.pop(mode)
    assert recorded["skipped_images"] == 3 and "pairs" not in recorded


def test_a_training_step_is_held_for_the_guard_weighted_by_its_rows():
    trainer, calls = stand_in_trainer(), []
    out = run_loss_step(trainer, None, batch(3, skipped=1), "train", loss_of(3, calls))
    assert len(calls) == 1 and out.loss.item() == 1.75
    held = trainer.step_guard.held
    assert held.loss is out.loss and held.weight == 3 / BLOCK and held.rows == 3
    assert held.metrics["hard_negative_weight"] == 0.5 and held.metrics["logit_scale"].item() == 20.0
    recorded = trainer.ledger.pop("train")
    assert recorded["pairs"] == 3 and recorded["skipped_images"] == 1
    assert "contrastive_loss" not in recorded  # the guard records the metrics, once it accepts the step


def test_an_evaluation_step_records_its_loss_and_metrics_at_once():
    trainer, calls = stand_in_trainer(), []
    run_loss_step(trainer, None, batch(3, skipped=0), "eval", loss_of(3, calls))
    assert trainer.step_guard.held is None and trainer.step_guard.rows == []
    recorded = trainer.ledger.pop("eval")
    assert recorded["pairs"] == 3
    assert recorded["loss"] == pytest.approx(1.75)  # the components' sum, unweighted by any process share
    assert recorded["contrastive_loss"] == pytest.approx(1.25) and "cos_positive" in recorded
