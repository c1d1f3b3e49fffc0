"""Bad data, interruptions, non-finite losses and untrusted files: each case asserts its message or count."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hnc_clip.callbacks import NonFiniteLossError
from hnc_clip.data import HncCollator, load_hnc_pairs
from hnc_clip.data.hnc import HncFormatError
from hnc_clip.losses import LOSSES, LossSpec, hnc_loss
from hnc_clip.tiny import build_word_tokenizer

from .conftest import REPO, TRAIN_SAMPLE
from .test_trainer import changed, run, weights

ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


def train_flags(tmp_path, model_dir, image_dir, out, *extra):
    return [
        "--model_name_or_path", str(model_dir), "--train_file", str(TRAIN_SAMPLE), "--image_dir", str(image_dir),
        "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--do_train", "--max_steps", "6",
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--logging_steps", "1", "--use_cpu",
        "--dataloader_num_workers", "0", "--seed", "3", "--save_strategy", "steps", "--save_steps", "3",
        "--report_to", "none", *extra,
    ]


def test_long_captions_are_truncated_and_counted():
    tok = build_word_tokenizer("a b c d e f g h".split(), model_max_length=77)
    feats = [{"pixel_values": torch.zeros(3, 2, 2), "positive": "a b c d e f g h", "negative": "a b",
              "image_id": "x"}]
    batch = HncCollator(tok, max_length=6)(feats)
    assert batch["truncated_captions"].item() == 1
    assert batch["input_ids"].shape == (2, 6)
    assert HncCollator(tok, max_length=77)(feats)["truncated_captions"].item() == 0


def test_unknown_caption_types_list_the_available_ones(tmp_path, caplog):
    from hnc_clip.data import select_pairs

    ds = load_hnc_pairs(str(TRAIN_SAMPLE), cache_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="hnc_clip.data"):
        out = select_pairs(ds, ["relation_subj", "spatial_nonsense"])
    assert set(out["type"]) == {"relation_subj"}
    assert any("['spatial_nonsense'] occur nowhere" in r.message and "'relation_obj'" in r.message
               for r in caplog.records)


def test_corrupt_image_during_training_is_skipped_and_counted(tmp_path, tiny_clip_dir, sample_image_dir):
    images = tmp_path / "images"
    images.mkdir()
    for f in sample_image_dir.iterdir():
        (images / f.name).write_bytes(f.read_bytes())
    victim = sorted(images.iterdir())[0]
    victim.write_bytes(b"")  # exists (passes the up-front check) but cannot be decoded
    # One worker process: a decode failure inside a worker must not kill the run.
    results, out = run(tmp_path, tiny_clip_dir, images, "--dataloader_num_workers", "1", "--max_steps", "6",
                       "--per_device_train_batch_size", "32")
    state = json.loads((Path(out) / "trainer_state.json").read_text())
    skipped = sum(h.get("skipped_images", 0) for h in state["log_history"])
    assert skipped > 0 and state["global_step"] == 6


# The fused optimizer (the default) skips on the device (`found_inf`); the other one drops the gradients.
OPTIMIZERS = ["adamw_torch_fused", "adamw_torch"]


def register_nan_loss(monkeypatch, name: str, on_calls=None) -> dict:
    """Register `--loss_type name`: the `hnc` loss, with a NaN contrastive term on the given (1-based) calls, or on
    every call. Returns the call counter."""
    calls = {"n": 0}

    def loss(inp, cfg):
        calls["n"] += 1
        out = hnc_loss(inp, cfg)
        if on_calls is None or calls["n"] in on_calls:
            out["contrastive_loss"] = out["contrastive_loss"] * float("nan")
        return out

    monkeypatch.setitem(LOSSES, name, LossSpec(loss))
    return calls


@pytest.mark.parametrize("optim", OPTIMIZERS)
def test_nonfinite_step_is_skipped_without_update(tmp_path, tiny_clip_dir, sample_image_dir, monkeypatch, caplog,
                                                  optim):
    register_nan_loss(monkeypatch, "nan_first", on_calls={1})
    with caplog.at_level("WARNING", logger="hnc_clip.callbacks"):
        _, out = run(tmp_path, tiny_clip_dir, sample_image_dir, "--loss_type", "nan_first", "--max_steps", "2",
                     "--optim", optim, "--save_strategy", "steps", "--save_steps", "1")
    before, after = weights(tiny_clip_dir), weights(f"{out}/checkpoint-1")
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step must not move any weight"
    # nor any optimizer moment or step count (the fused kernel's state exists, untouched; the other has none)
    state = torch.load(f"{out}/checkpoint-1/optimizer.pt", weights_only=True)["state"]
    for s in state.values():
        assert float(s["step"]) == 0 and not s["exp_avg"].any() and not s["exp_avg_sq"].any()
    assert changed(before, weights(out)), "the next, finite step trains"
    history = json.loads((Path(out) / "trainer_state.json").read_text())["log_history"]
    assert [h["nonfinite_steps"] for h in history[:2]] == [1, 0]
    assert "contrastive_loss" not in history[0]  # the skipped step's NaN metrics are not averaged in
    assert math.isfinite(history[1]["contrastive_loss"])
    warnings = [r.message for r in caplog.records if "non-finite" in r.message]
    assert len(warnings) == 1 and warnings[0].startswith("non-finite loss at step 1 (contrastive_loss=nan, ")


@pytest.mark.parametrize("optim", OPTIMIZERS)
def test_a_nonfinite_micro_step_skips_its_whole_optimizer_step(tmp_path, tiny_clip_dir, sample_image_dir,
                                                                monkeypatch, optim):
    """Gradient accumulation: the flag is the max over the step's micro-steps, so a finite first micro-step does
    not let the accumulated (NaN) gradient through. (Two steps: a run whose only step is skipped trained nothing.)"""
    calls = register_nan_loss(monkeypatch, "nan_second", on_calls={2})
    _, out = run(tmp_path, tiny_clip_dir, sample_image_dir, "--loss_type", "nan_second", "--max_steps", "2",
                 "--gradient_accumulation_steps", "2", "--optim", optim, "--save_strategy", "steps", "--save_steps",
                 "1")  # fmt: skip
    before, after = weights(tiny_clip_dir), weights(f"{out}/checkpoint-1")
    assert calls["n"] == 4 and all(torch.equal(before[k], after[k]) for k in before)
    history = json.loads((Path(out) / "trainer_state.json").read_text())["log_history"]
    assert history[0]["nonfinite_steps"] == 1 and math.isfinite(history[0]["contrastive_loss"])  # 1st micro-step's


@pytest.mark.parametrize("optim", OPTIMIZERS)
@pytest.mark.parametrize("limit, max_steps", [(2, 5), (1, 2)])
def test_too_many_nonfinite_steps_stop_the_run(tmp_path, tiny_clip_dir, sample_image_dir, monkeypatch, optim, limit,
                                               max_steps):
    """Stopped at the (limit + 1)-th non-finite step: found there on the host path, read back one step later on the
    device path, or when training ends if that was the last step (limit 1, 2 steps)."""
    register_nan_loss(monkeypatch, "always_nan")
    stops = f"non-finite in {limit + 1} steps \\(last at step {limit + 1}\\).*--max_nonfinite_steps"
    with pytest.raises(NonFiniteLossError, match=stops):
        run(tmp_path, tiny_clip_dir, sample_image_dir, "--loss_type", "always_nan", "--max_nonfinite_steps",
            str(limit), "--max_steps", str(max_steps), "--optim", optim)


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, tiny_clip_dir, sample_image_dir):
    full = tmp_path / "full"
    proc = subprocess.run([sys.executable, "run_hnc_clip.py", *train_flags(tmp_path, tiny_clip_dir, sample_image_dir,
                                                                          full)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed = tmp_path / "killed"
    flags = train_flags(tmp_path, tiny_clip_dir, sample_image_dir, killed)
    proc = subprocess.run([sys.executable, "tests/kill_run.py", "SIGKILL", "4", "--", *flags], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "checkpoint-3").is_dir() and not (killed / "model.safetensors").exists()

    proc = subprocess.run([sys.executable, "run_hnc_clip.py", *flags, "--resume_from_checkpoint",
                           str(killed / "checkpoint-3")], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(full), weights(killed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    assert not all(torch.equal(a[k], weights(tiny_clip_dir)[k]) for k in a)


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path, tiny_clip_dir, sample_image_dir):
    out = tmp_path / "pre"
    flags = train_flags(tmp_path, tiny_clip_dir, sample_image_dir, out, "--save_steps", "100")
    proc = subprocess.run([sys.executable, "tests/kill_run.py", "SIGTERM", "2", "--", *flags], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "SIGTERM received" in proc.stdout + proc.stderr
    assert (out / "checkpoint-3" / "model.safetensors").exists()  # step 2 finishes, step 3 saves & stops
    assert not (out / "model.safetensors").exists()  # the unfinished run is not published as final


def test_interrupted_conversion_leaves_no_trusted_cache(tmp_path):
    bad = tmp_path / "cut.json"
    bad.write_text(TRAIN_SAMPLE.read_text()[: 400_000])  # cut mid-file, like an interrupted download
    for _ in range(2):  # the second call must fail the same way, not serve a partial cache
        with pytest.raises(HncFormatError, match="cut.json: invalid JSON"):
            load_hnc_pairs(str(bad), cache_dir=str(tmp_path / "cache"))
    finished = [p for p in (tmp_path / "cache").rglob("*.arrow") if ".incomplete" not in str(p)]
    assert finished == []


def test_models_load_from_safetensors_only(tmp_path, tiny_clip_dir):
    from types import SimpleNamespace

    from transformers import CLIPModel

    from hnc_clip.modeling import load_model

    pickled = tmp_path / "pickled"
    CLIPModel.from_pretrained(tiny_clip_dir).save_pretrained(pickled)
    state = weights(pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    args = SimpleNamespace(model_name_or_path=str(pickled), cache_dir=None, model_revision="main", token=None,
                           trust_remote_code=False, attn_implementation="sdpa")
    with pytest.raises(OSError, match="safetensors"):
        load_model(args)


def test_no_unsafe_deserialisation_in_project_code():
    sources = [REPO / "run_hnc_clip.py", *(REPO / "hnc_clip").rglob("*.py"), *(REPO / "eval").rglob("*.py")]
    for path in sources:
        text = path.read_text()
        assert not re.search(r"^\s*import pickle|^\s*from pickle", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert "trust_remote_code=True" not in text, path


def test_fsdp_is_refused_with_what_works_instead():
    from types import SimpleNamespace

    from hnc_clip.trainer import UnsupportedParallelismError, check_parallelism

    with pytest.raises(UnsupportedParallelismError, match="logit_scale.*zero2.yaml, zero3.yaml"):
        check_parallelism(SimpleNamespace(is_fsdp_enabled=True))
    check_parallelism(SimpleNamespace(is_fsdp_enabled=False))  # DDP / DeepSpeed / one process: fine


def test_the_step_guard_skips_on_the_device_only_where_the_optimizer_can():
    """found_inf is honoured by torch's fused optimizers only, and an fp16 GradScaler or DeepSpeed would overwrite
    or ignore it: those keep the host check."""
    from types import SimpleNamespace

    from hnc_clip.callbacks import StepGuard

    p = torch.nn.Parameter(torch.zeros(2))

    def on_device(optimizer, scaler=None, deepspeed=False, wrapped=True):
        opt = SimpleNamespace(optimizer=optimizer) if wrapped else optimizer  # accelerate's AcceleratedOptimizer
        trainer = SimpleNamespace(optimizer=opt, accelerator=SimpleNamespace(scaler=scaler),
                                  is_deepspeed_enabled=deepspeed)
        return StepGuard(trainer).on_device

    fused = torch.optim.AdamW([p], fused=True)
    assert on_device(fused) and on_device(fused, wrapped=False)
    assert not on_device(torch.optim.AdamW([p], fused=False))
    assert not on_device(torch.optim.AdamW([p], foreach=True))
    assert not on_device(fused, scaler=object())  # fp16: the GradScaler sets found_inf itself
    assert not on_device(fused, deepspeed=True)


def test_under_deepspeed_a_nonfinite_loss_stops_at_once_unless_deepspeed_skips_it():
    """DeepSpeed steps inside backward(), before the loss can be checked: only its own overflow check (fp16, or bf16
    with check_grad_overflow under ZeRO-1/2) skips the update. Without it the run stops at the first NaN."""
    from types import SimpleNamespace

    from hnc_clip.callbacks import StepGuard

    engine_optimizer = SimpleNamespace(check_grad_overflow=False, dtype=torch.bfloat16)  # ZeRO-1/2, bf16 default
    trainer = SimpleNamespace(
        optimizer=SimpleNamespace(optimizer=SimpleNamespace()),  # DeepSpeedOptimizerWrapper: no found_inf support
        accelerator=SimpleNamespace(scaler=None, num_processes=1),
        is_deepspeed_enabled=True,
        model_wrapped=SimpleNamespace(optimizer=engine_optimizer),  # the DeepSpeedEngine
        args=SimpleNamespace(max_nonfinite_steps=10),
    )
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    assert StepGuard(trainer).check(one, {"contrastive_loss": one}, step=7) is True
    stops = "step 7 \\(contrastive_loss=nan\\) under DeepSpeed.*check_grad_overflow"
    with pytest.raises(NonFiniteLossError, match=stops):
        StepGuard(trainer).check(nan, {"contrastive_loss": nan}, step=7)
    engine_optimizer.check_grad_overflow = True  # DeepSpeed skipped the update: counted, the run goes on
    guard = StepGuard(trainer)
    assert guard.check(nan, {"contrastive_loss": nan}, step=7) is False and guard.nonfinite_steps == 1
    trainer.model_wrapped.optimizer = SimpleNamespace(dtype=torch.float16)  # ZeRO-3 in fp16 checks overflow too
    assert StepGuard(trainer).check(nan, {"contrastive_loss": nan}, step=7) is False
