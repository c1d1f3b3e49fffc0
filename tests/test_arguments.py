"""Flag validation (`hnc_clip.arguments`): every float finite, every knob in its range, the flag named."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from types import SimpleNamespace

import pytest

from hnc_clip.arguments import DataArguments, HncTrainingArguments
from hnc_clip.schedules import SCHEDULES

from .helpers import training_args


def float_fields(cls, instance) -> list[str]:
    """The float flags: holding a float, or declared `float | None` (`--max_logit_scale`: None for SigLIP's family).
    Declared types are read with `get_type_hints`: HfArgumentParser rewrites `Field.type` in place once it has
    parsed a dataclass, so its string form depends on which tests ran first."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls)
            if isinstance(getattr(instance, f.name, None), float)
            or float in typing.get_args(hints.get(f.name))]  # fmt: skip


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_every_float_flag_must_be_finite(tmp_path, bad):
    """NaN passes every `<`/`>` range check, so each float flag (the recipe's and the Trainer's) is checked for it
    by name: `--max_logit_scale nan` used to write NaN into logit_scale."""
    names = float_fields(HncTrainingArguments, training_args(tmp_path))
    assert {"max_logit_scale", "kl_temperature", "learning_rate", "max_skipped_fraction"} <= set(names)
    for name in names:
        with pytest.raises(ValueError, match=f"--{name} must be a finite number"):
            training_args(tmp_path, **{name: bad})


@pytest.mark.parametrize("flag, value, message", [
    ("kl_temperature", 0.0, "> 0"), ("dpo_beta", -0.1, "> 0"), ("max_logit_scale", 0.0, "> 0"),
    ("hard_negative_step_size", -0.1, ">= 0"), ("hard_negative_weight", -1.0, ">= 0"),
    ("hard_negative_weight_min", -0.5, ">= 0"), ("hard_negative_step_every", 0, ">= 1"),
    ("hard_negative_warmup_steps", -3, ">= 0"), ("kl_weight", -1.0, ">= 0"), ("dpo_contrastive_weight", -1.0, ">= 0"),
    ("max_skipped_fraction", 1.5, "<= 1"), ("lora_dropout", 1.0, "< 1"), ("lora_r", 0, ">= 1"),
    ("learning_rate", -1e-3, ">= 0"), ("adam_beta2", 1.0, "< 1"), ("adam_epsilon", 0.0, "> 0"),
    ("max_grad_norm", -1.0, ">= 0"), ("max_nonfinite_steps", -1, ">= 0"), ("group_by_image", -2, ">= 0"),
    ("peer_timeout", -5, ">= 0"),
])  # fmt: skip
def test_out_of_range_flags_name_the_flag_and_the_bound(tmp_path, flag, value, message):
    with pytest.raises(ValueError, match=f"--{flag} must be .*{message}.*, got {value}"):
        training_args(tmp_path, **{flag: value})


@pytest.mark.parametrize("flag, value, message", [
    ("max_text_length", 1, ">= 2"), ("max_train_samples", 0, ">= 1"), ("max_eval_samples", -5, ">= 1"),
    ("max_image_pixels", 0, ">= 1"),
])  # fmt: skip
def test_data_flags_are_range_checked(flag, value, message):
    with pytest.raises(ValueError, match=f"--{flag} must be {message}, got {value}"):
        DataArguments(**{flag: value})


def test_defaults_pass(tmp_path):
    args = training_args(tmp_path)
    assert args.max_skipped_fraction == 0.5 and args.overwrite_output_dir is False
    DataArguments()


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_never_leave_the_span_of_the_two_weights(name):
    """Whatever the knobs (here set past what the flags allow), λ stays within [λ_min, λ] and ≥ 0: a negative step
    size used to drive the staircase below zero, rewarding the model for preferring the hard negative."""
    args = SimpleNamespace(hard_negative_weight=1.0, hard_negative_weight_min=0.2, hard_negative_warmup_steps=10,
                           hard_negative_step_size=-0.3, hard_negative_step_every=1)
    values = [SCHEDULES[name](t, args) for t in (-5, 0, 1, 5, 10, 50, 10_000)]
    assert all(0.2 <= v <= 1.0 for v in values), values
    args.hard_negative_weight, args.hard_negative_weight_min = -1.0, -2.0
    assert all(SCHEDULES[name](t, args) == 0.0 for t in (0, 5, 100))


@pytest.mark.parametrize("flag, value, loss", [
    ("fsc_focal_gamma", 1.0, "hnc"), ("fsc_label_smoothing", 0.1, "ce_clip"), ("ce_clip_imc_weight", 0.5, "fsc_clip"),
    ("ce_clip_cmr_weight", 0.0, "negclip"), ("ce_clip_threshold_max", 5.0, "hnc"), ("fsc_local_weight", 0.2, "hnc"),
])  # fmt: skip
def test_a_loss_flag_with_a_loss_that_does_not_read_it_is_refused(tmp_path, flag, value, loss):
    with pytest.raises(ValueError, match=f"--{flag} has no effect with --loss_type {loss}: it is read by --loss_type"):
        training_args(tmp_path, loss_type=loss, **{flag: value})


def test_every_loss_setting_is_declared_once_and_is_a_flag():
    """A `LossConfig` field is either read by every loss (λ is scheduled; the regulariser and the same-image mask
    are any loss's) or named by the losses that read it, in their `LossSpec.flags` (λ's: `uses_weight`): so the
    refusal of a flag a loss ignores follows from where the loss is declared. Each is a flag of the same name."""
    from hnc_clip.loss_config import LossConfig
    from hnc_clip.losses import LOSSES, WEIGHT_FLAGS, flag_readers

    every_loss = {"hard_negative_weight", "l2_reg_weight", "mask_same_image", "state"}
    own = [flag for spec in LOSSES.values() for flag in spec.flags]
    assert len(own) == len(set(own))  # no setting read by two losses' own lists
    config = {f.name for f in dataclasses.fields(LossConfig)}
    assert set(own) == config - every_loss
    flags = {f.name for f in dataclasses.fields(HncTrainingArguments)}
    assert set(flag_readers()) <= flags and config - {"state"} <= flags
    assert flag_readers()["hard_negative_step_every"] == [n for n, s in LOSSES.items() if s.uses_weight]
    assert set(WEIGHT_FLAGS) < flags and flag_readers()["fsc_local_sparsify"] == ["fsc_clip"]


def test_fsc_and_ce_clip_flags_with_their_loss(tmp_path):
    args = training_args(tmp_path, loss_type="fsc_clip", fsc_focal_gamma=1.0, fsc_label_smoothing=0.1,
                         hard_negative_weight=0.5)
    assert (args.fsc_focal_gamma, args.fsc_label_smoothing) == (1.0, 0.1)
    args = training_args(tmp_path, loss_type="ce_clip", ce_clip_imc_weight=0.5, ce_clip_cmr_weight=0.1,
                         ce_clip_threshold_max=5.0)
    assert args.ce_clip_threshold_max == 5.0
    for flag, value, message in (("fsc_focal_gamma", -1.0, ">= 0"), ("fsc_label_smoothing", 1.0, "< 1"),
                                 ("ce_clip_cmr_weight", -0.2, ">= 0"), ("ce_clip_threshold_max", -1.0, ">= 0")):
        loss = "fsc_clip" if flag.startswith("fsc") else "ce_clip"
        with pytest.raises(ValueError, match=f"--{flag} must be .*{message}, got {value}"):
            training_args(tmp_path, loss_type=loss, **{flag: value})


def test_fsc_local_term_flags(tmp_path):
    args = training_args(tmp_path, loss_type="fsc_clip", fsc_local_weight=0.2, fsc_local_sparsify=True)
    assert (args.fsc_local_weight, args.fsc_local_normalizer, args.fsc_local_sparsify) == (0.2, "minmax", True)
    for kwargs, message in (
        ({"fsc_local_weight": -0.1}, "--fsc_local_weight must be >= 0, got -0.1"),
        ({"fsc_local_weight": 0.2, "fsc_local_normalizer": "max"}, "--fsc_local_normalizer 'max': one of minmax, "),
        ({"fsc_local_sparsify": True}, "--fsc_local_sparsify shapes FSC-CLIP's local term, which --fsc_local_weight"),
        ({"fsc_local_normalizer": "softmax"}, "--fsc_local_normalizer shapes FSC-CLIP's local term"),
        ({"fsc_local_weight": 0.2, "fsc_local_normalizer": "softmax", "fsc_local_sparsify": True},
         "--fsc_local_sparsify drops patches of the min–max weights only"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(message)):
            training_args(tmp_path, loss_type="fsc_clip", **kwargs)


def test_ce_clip_has_no_lambda(tmp_path):
    with pytest.raises(ValueError, match="--loss_type ce_clip has no λ"):
        training_args(tmp_path, loss_type="ce_clip", hard_negative_weight=0.5)
    with pytest.raises(ValueError, match="--loss_type ce_clip has no λ"):
        training_args(tmp_path, loss_type="ce_clip", hard_negative_schedule="linear")
@pytest.mark.parametrize("loss, flag, value", [
    ("clip", "hard_negative_weight", 2.0), ("clip", "hard_negative_schedule", "linear"),
    ("dpo", "hard_negative_weight_min", 0.5), ("negclip", "hard_negative_warmup_steps", 100),
    ("clip", "hard_negative_step_size", 0.2), ("dpo", "hard_negative_step_every", 50),
    ("hnc", "kl_weight", 2.0), ("pairwise", "kl_temperature", 2.0), ("clip", "dpo_beta", 0.5),
    ("kl_teacher", "dpo_contrastive_weight", 0.0),
])  # fmt: skip
def test_a_flag_the_loss_never_reads_is_refused(tmp_path, loss, flag, value):
    """A knob set away from its default that `--loss_type` ignores would train something other than what was asked
    (`--loss_type clip --hard_negative_weight 2` trained plain CLIP): refused, naming the flag and the losses that
    read it. The same flags with a loss that reads them pass, and defaults pass with every loss."""
    with pytest.raises(ValueError, match=rf"--{flag} has no effect with --loss_type {loss}: .*read by"):
        training_args(tmp_path, loss_type=loss, **{flag: value})
    users = {"kl_weight": "kl_teacher", "kl_temperature": "kl_teacher", "dpo_beta": "dpo",
             "dpo_contrastive_weight": "dpo"}  # fmt: skip
    training_args(tmp_path, loss_type=users.get(flag, "hnc"), **{flag: value})
    for name in ("clip", "hnc", "pairwise", "thesis_l2", "kl_teacher", "dpo", "negclip"):
        training_args(tmp_path, loss_type=name)


def test_label_smoothing_is_refused(tmp_path):
    """The Trainer's label smoother is never called (HncTrainer computes its own losses): a non-zero factor would be
    range-checked and ignored."""
    with pytest.raises(ValueError, match="--label_smoothing_factor 0.1 has no effect"):
        training_args(tmp_path, label_smoothing_factor=0.1)
    training_args(tmp_path, label_smoothing_factor=0.0)


ZERO3 = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}


@pytest.mark.parametrize("how", ["dict", "file", "accelerate", "accelerate_file"])
@pytest.mark.parametrize("flags, message", [
    ({"l2_reg_weight": 0.1}, r"--l2_reg_weight is not supported under DeepSpeed ZeRO-3: .*θ₀"),
    ({"finetune_mode": "lora"}, r"--finetune_mode lora is not supported under DeepSpeed ZeRO-3: .*merge"),
])  # fmt: skip
def test_what_zero3_would_get_wrong_is_refused_before_deepspeed_starts(tmp_path, monkeypatch, how, flags, message):
    """Under ZeRO-3 a parameter outside its module's forward is an empty shard: θ₀ for --l2_reg_weight (so
    ‖θ−θ₀‖² is 0 or a shape error) and peft's LoRA merge before the final save read it there. Refused at parse
    time, from `--deepspeed` (dict or file) or from `accelerate launch --config_file zero3.yaml` (its environment),
    before transformers imports DeepSpeed (not installed on this machine)."""
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ZERO3))
    kw = {"dict": {"deepspeed": ZERO3}, "file": {"deepspeed": str(path)}}.get(how, {})
    if how.startswith("accelerate"):
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        if how == "accelerate":
            monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
        else:
            monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    with pytest.raises(ValueError, match=message):
        training_args(tmp_path, **kw, **flags)


def test_the_zero_stage_is_read_from_every_way_of_giving_it(tmp_path):
    from hnc_clip.arguments import check_zero3, deepspeed_zero_stage

    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert deepspeed_zero_stage(ZERO3, {}) == 3 and deepspeed_zero_stage(str(path), {}) == 2
    assert deepspeed_zero_stage(None, {}) is None and deepspeed_zero_stage({"bf16": {}}, {}) == 0
    env = {"ACCELERATE_USE_DEEPSPEED": "true"}
    assert deepspeed_zero_stage(None, env) == 2  # accelerate's default stage
    assert deepspeed_zero_stage(None, {**env, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) == 3
    assert deepspeed_zero_stage(None, {**env, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)}) == 2
    assert deepspeed_zero_stage(None, {"ACCELERATE_USE_DEEPSPEED": "false", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) \
        is None
    args = SimpleNamespace(l2_reg_weight=0.1, finetune_mode="lora")
    check_zero3(args, 2)  # ZeRO-2 keeps whole parameters on every process: both work
    check_zero3(args, None)
    with pytest.raises(ValueError, match="--l2_reg_weight"):
        check_zero3(args, 3)


@pytest.mark.parametrize("data", [{"train_file": "hnc_train.json"}, {"validation_file": "rows.jsonl"},
                                  {"train_sources": ["table:rows.csv"]}])  # fmt: skip
def test_a_missing_image_dir_is_refused_when_parsing(data):
    """HNC and table data name image files: without --image_dir the run stops at parsing, not after converting an
    8 GB JSON file; image-caption sources bring their own images."""
    with pytest.raises(ValueError, match="--image_dir is required"):
        DataArguments(**data)
    assert DataArguments(dataset_name="user/captions").image_dir is None


def test_parsing_writes_no_environment(tmp_path, monkeypatch):
    """--torch_compile's --compile_regions / --compile_dynamic reach accelerate's plugin through the trainer:
    parsing the flags leaves the environment as it was."""
    import os

    for var in ("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", "ACCELERATE_DYNAMO_USE_DYNAMIC"):
        monkeypatch.delenv(var, raising=False)
    before = dict(os.environ)
    training_args(tmp_path, torch_compile=True, compile_regions=False)
    assert dict(os.environ) == before
