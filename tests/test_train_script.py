"""The training application (`hnc_clip.scripts.train`, `hnc-clip-train`, `run_hnc_clip.py`): what a run does when
told too little, and what it records about the machine it ran on."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import CLIPModel

from hnc_clip.losses import LOSSES
from hnc_clip.scripts import train as train_app

from .helpers import TEST_SAMPLE, TRAIN_SAMPLE, run


def base_flags(tmp_path, tiny_clip_dir, sample_image_dir) -> list[str]:
    return [
        "--model_name_or_path", str(tiny_clip_dir), "--image_dir", str(sample_image_dir),
        "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), "--use_cpu",
        "--dataloader_num_workers", "0", "--report_to", "none", "--per_device_eval_batch_size", "8",
    ]  # fmt: skip


def test_nothing_to_do_exits_2_and_writes_nothing(tmp_path, tiny_clip_dir, sample_image_dir, capsys):
    flags = base_flags(tmp_path, tiny_clip_dir, sample_image_dir) + ["--train_file", str(TRAIN_SAMPLE)]
    assert train_app.cli(flags) == 2
    assert "There is nothing to do" in capsys.readouterr().err
    out = tmp_path / "out"
    assert not (out / "README.md").exists() and not (out / "model.safetensors").exists()


def test_do_eval_needs_a_validation_file(tmp_path, tiny_clip_dir, sample_image_dir):
    flags = base_flags(tmp_path, tiny_clip_dir, sample_image_dir) + ["--do_eval"]
    with pytest.raises(ValueError, match="--do_eval .* needs --validation_file"):
        train_app.main(*train_app.parse_args(flags))
    # --eval_strategy turns --do_eval on (as in the Trainer), so it is refused the same way
    flags = base_flags(tmp_path, tiny_clip_dir, sample_image_dir) + [
        "--do_train", "--train_file", str(TRAIN_SAMPLE), "--eval_strategy", "steps"]  # fmt: skip
    with pytest.raises(ValueError, match="needs --validation_file"):
        train_app.main(*train_app.parse_args(flags))


def test_an_evaluation_only_run_writes_no_model_card(tmp_path, tiny_clip_dir, sample_image_dir):
    flags = base_flags(tmp_path, tiny_clip_dir, sample_image_dir) + [
        "--do_eval", "--validation_file", str(TEST_SAMPLE), "--max_eval_samples", "16"]  # fmt: skip
    results = train_app.main(*train_app.parse_args(flags))
    assert results["eval_samples"] == 16
    out = tmp_path / "out"
    assert (out / "eval_results.json").exists()
    assert not (out / "README.md").exists() and not (out / "model.safetensors").exists()


def test_machine_defaults_are_logged_and_recorded(tmp_path, tiny_clip_dir, sample_image_dir, caplog):
    caplog.set_level(logging.WARNING, logger="hnc_clip")
    # bf16 and --sdpa_backends left unset: decided from the machine; workers given (0): not a machine default
    results, out = run(tmp_path, tiny_clip_dir, sample_image_dir)
    lines = [r.getMessage() for r in caplog.records if "machine-dependent defaults" in r.getMessage()]
    assert len(lines) == 1
    assert "--bf16 False" in lines[0] and "--sdpa_backends flash efficient math" in lines[0]
    assert "--dataloader_num_workers" not in lines[0]
    recorded = json.loads(open(f"{out}/all_results.json").read())["machine_defaults"]
    assert recorded == {"bf16": False, "dataloader_persistent_workers": False,
                        "sdpa_backends": ["flash", "efficient", "math"]}  # fmt: skip
    assert "train_loss" in json.loads(open(f"{out}/all_results.json").read())  # the Trainer's metrics kept
    card = open(f"{out}/README.md").read()
    assert "`bf16=False`" in card and "`sdpa_backends=['flash', 'efficient', 'math']`" in card


def test_given_flags_are_not_machine_defaults(tmp_path, tiny_clip_dir, sample_image_dir):
    _, out = run(tmp_path, tiny_clip_dir, sample_image_dir, "--bf16", "false", "--sdpa_backends", "math",
                 "--dataloader_persistent_workers", "false")
    assert json.loads(open(f"{out}/all_results.json").read())["machine_defaults"] == {}


@pytest.mark.parametrize("loss_type", sorted(LOSSES))
def test_l2_reg_weight_regularises_every_loss(tmp_path, tiny_clip_dir, sample_pairs, loss_type):
    """`--l2_reg_weight` adds λ_reg·Σ‖θ−θ₀‖² to any loss: the component's value is that sum over the trainable
    parameters, and the gradient changes by exactly 2·λ_reg·(θ−θ₀)."""
    from transformers import CLIPProcessor

    from hnc_clip.arguments import HncTrainingArguments
    from hnc_clip.data import HncCollator
    from hnc_clip.modeling import frozen_copy
    from hnc_clip.trainer import HncTrainer

    torch.manual_seed(0)
    model = CLIPModel.from_pretrained(tiny_clip_dir)
    processor = CLIPProcessor.from_pretrained(tiny_clip_dir)
    reference = frozen_copy(model) if LOSSES[loss_type].needs_reference else None
    args = HncTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", loss_type=loss_type,
                                l2_reg_weight=0.1)  # fmt: skip
    trainer = HncTrainer(model=model, args=args, reference_model=reference)
    with torch.no_grad():  # away from θ₀, so the regulariser and its gradient are not zero
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    features = [{**p, "pixel_values": torch.randn(3, 32, 32)} for p in sample_pairs["train"][:8]]
    batch = HncCollator(processor.tokenizer, max_length=32)(features)
    model.train()

    def loss_and_grads():
        model.zero_grad()
        loss, components = trainer.compute_loss(model, dict(batch), return_outputs=True)
        loss.backward()
        return components, {n: p.grad.clone() for n, p in model.named_parameters()}

    with_reg, grads_reg = loss_and_grads()
    trainer.args.l2_reg_weight = 0.0
    without, grads = loss_and_grads()
    assert "l2_reg_loss" not in without
    sq = sum(((p.detach() - p0) ** 2).sum() for p, p0 in trainer._theta0)
    torch.testing.assert_close(with_reg["l2_reg_loss"], 0.1 * sq)
    theta0 = {id(p): p0 for p, p0 in trainer._theta0}
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads_reg[name] - grads[name], 0.2 * (p.detach() - theta0[id(p)]),
                                   rtol=1e-4, atol=1e-6, msg=name)  # fmt: skip


def test_l2_reg_weight_is_refused_where_it_would_do_nothing(tmp_path):
    from hnc_clip.arguments import HncTrainingArguments

    with pytest.raises(ValueError, match="--gradcache_chunk_size does not support --l2_reg_weight"):
        HncTrainingArguments(output_dir=str(tmp_path), use_cpu=True, gradcache_chunk_size=4, l2_reg_weight=0.1)
    with pytest.raises(ValueError, match="--l2_reg_weight must be >= 0"):
        HncTrainingArguments(output_dir=str(tmp_path), use_cpu=True, l2_reg_weight=-1.0)
