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
from hnc_clip.data.arrow_cache import convert_range
from hnc_clip.data.hnc import HncFormatError
from hnc_clip.losses import LOSSES, LossSpec, hnc_loss
from hnc_clip.scripts import train as train_app
from hnc_clip.tiny import build_word_tokenizer

from .helpers import REPO, TRAIN_SAMPLE, changed, copy_images, run, train_flags, weights

ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


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

    from hnc_clip.engines import UnsupportedParallelismError, check_parallelism

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


def register_nan_gradient_loss(monkeypatch, name: str, on_calls) -> None:
    """`--loss_type name`: the `hnc` loss, finite, whose gradient is NaN on the given calls (0·√0 has a NaN
    derivative: √'s is infinite at 0)."""

    def loss(inp, cfg):
        loss.calls += 1
        out = hnc_loss(inp, cfg)
        if loss.calls in on_calls:
            c = out["contrastive_loss"]
            out["contrastive_loss"] = c + 0.0 * torch.sqrt(c - c)
        return out

    loss.calls = 0
    monkeypatch.setitem(LOSSES, name, LossSpec(loss))


@pytest.mark.parametrize("optim", OPTIMIZERS)
def test_a_finite_loss_with_nonfinite_gradients_is_not_applied(tmp_path, tiny_clip_dir, sample_image_dir,
                                                               monkeypatch, caplog, optim):
    """Only the loss used to be checked: a finite loss with NaN gradients (`--kl_temperature 0` gave one) wrote NaN
    into every weight. The gradients are checked on the device, folded into the same skip flag."""
    register_nan_gradient_loss(monkeypatch, "nan_grad_first", on_calls={1})
    with caplog.at_level("WARNING", logger="hnc_clip.callbacks"):
        _, out = run(tmp_path, tiny_clip_dir, sample_image_dir, "--loss_type", "nan_grad_first", "--max_steps", "2",
                     "--optim", optim, "--save_strategy", "steps", "--save_steps", "1")
    before, after = weights(tiny_clip_dir), weights(f"{out}/checkpoint-1")
    assert all(torch.equal(before[k], after[k]) for k in before), "an update with NaN gradients must not land"
    final = weights(out)
    assert changed(before, final) and all(torch.isfinite(v).all() for v in final.values())
    history = json.loads((Path(out) / "trainer_state.json").read_text())["log_history"]
    assert [h["nonfinite_steps"] for h in history[:2]] == [1, 0] and math.isfinite(history[0]["loss"])
    assert any("non-finite gradients at step 1 (the loss was finite): step skipped (1/10)" in r.message
               for r in caplog.records)


def test_kl_temperature_zero_never_lands_nan_weights(tmp_path, tiny_clip_dir, sample_image_dir):
    """Refused at parse time; forced past the check, every step's gradients are NaN, every update is skipped, and
    the run stops for having trained nothing instead of saving NaN weights."""
    from hnc_clip.errors import RunAbortedError

    flags = train_flags(tmp_path, tiny_clip_dir, sample_image_dir, tmp_path / "out", "--loss_type", "kl_teacher",
                        "--max_steps", "2", "--save_steps", "1")  # fmt: skip
    with pytest.raises(ValueError, match="--kl_temperature must be > 0"):
        train_app.parse_args([*flags, "--kl_temperature", "0"])
    model_args, data_args, training_args = train_app.parse_args(flags)
    training_args.kl_temperature = 0.0
    with pytest.raises(RunAbortedError, match="2 of 2 optimizer steps were skipped|no optimizer step"):
        train_app.main(model_args, data_args, training_args)
    first = weights(tmp_path / "out" / "checkpoint-1")
    assert all(torch.equal(first[k], v) for k, v in weights(tiny_clip_dir).items())
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_run_that_trains_on_nothing_fails_with_a_clear_message(tmp_path, tiny_clip_dir, sample_image_dir, capsys):
    """Every image a git-lfs pointer: the run used to exit 0 with the base weights and a model card. It stops (exit
    1) once the skipped share is certain, naming the count; with the bound lifted it still fails at the end, as no
    step was applied. Nothing is saved either way."""
    images = copy_images(sample_image_dir, tmp_path / "lfs", corrupt="all")
    flags = train_flags(tmp_path, tiny_clip_dir, images, tmp_path / "out", "--max_steps", "3", "--save_strategy",
                        "no")  # fmt: skip
    assert train_app.cli(flags) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: 16 of 16 pairs \(100.0%\) had no readable image.*--max_skipped_fraction 0.5", err), err
    assert not (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "out" / "README.md").exists()
    flags = train_flags(tmp_path, tiny_clip_dir, images, tmp_path / "out2", "--max_steps", "3", "--save_strategy",
                        "no", "--max_skipped_fraction", "1")  # fmt: skip
    assert train_app.cli(flags) == 1
    assert "no optimizer step of the 3 was applied (24 of 24 pairs had no readable image" in capsys.readouterr().err
    assert not (tmp_path / "out2" / "model.safetensors").exists()


def test_eval_loss_and_samples_count_only_the_pairs_scored(tmp_path, tiny_clip_dir, sample_image_dir, sample_pairs):
    """Two eval batches, the second's images all unreadable: eval_loss is the first batch's (it used to be averaged
    with a 0, halving it) and eval_samples counts the 8 pairs scored, not 16; a reference run on the first batch
    alone gives the same numbers."""
    from hnc_clip.data.hnc import HncPair, hnc_test_entry, write_hnc

    pairs = [HncPair(p["positive"], p["negative"], p["type"]) for p in sample_pairs["train"][:16]]
    readable, unreadable = sorted({p["image_file"] for p in sample_pairs["train"]})[:2]
    images = copy_images(sample_image_dir, tmp_path / "img", corrupt={unreadable})
    both = write_hnc(str(tmp_path / "both.json"), {readable: hnc_test_entry(pairs[:8]),
                                                    unreadable: hnc_test_entry(pairs[8:])})  # fmt: skip
    alone = write_hnc(str(tmp_path / "alone.json"), {readable: hnc_test_entry(pairs[:8])})

    def evaluate(path, name):
        flags = ["--model_name_or_path", str(tiny_clip_dir), "--validation_file", path, "--image_dir", str(images),
                 "--output_dir", str(tmp_path / name), "--cache_dir", str(tmp_path / "cache"), "--do_eval",
                 "--per_device_eval_batch_size", "8", "--use_cpu", "--report_to", "none", "--dataloader_num_workers",
                 "0"]  # fmt: skip
        return train_app.main(*train_app.parse_args(flags))

    got, want = evaluate(both, "both"), evaluate(alone, "alone")
    assert got["eval_samples"] == want["eval_samples"] == 8
    assert got["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-6) and math.isfinite(want["eval_loss"])
    assert got["eval_skipped_images"] == 8 and want["eval_skipped_images"] == 0
    assert got["eval_hard_negative_accuracy"] == pytest.approx(want["eval_hard_negative_accuracy"])


def test_logged_means_weigh_each_batch_by_its_rows(tmp_path):
    """A full batch of 8 at 1.0 and a last batch of 4 at 4.0 average to 2.0 (not 2.5); a skipped step (device mask)
    and a placeholder (weight 0, NaN values) add nothing; counts are summed."""
    from hnc_clip.arguments import HncTrainingArguments
    from hnc_clip.tiny import build_tiny_clip
    from hnc_clip.trainer import HncTrainer

    args = HncTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                per_device_train_batch_size=8)  # fmt: skip
    trainer = HncTrainer(model=build_tiny_clip(16), args=args)
    trainer.ledger.add("train", "margin", torch.tensor(1.0), weight=8 / 8)
    trainer.ledger.add("train", "margin", torch.tensor(4.0), weight=4 / 8)
    trainer.ledger.add("train", "margin", torch.tensor(float("nan")), weight=8 / 8, mask=torch.tensor(False))
    trainer.ledger.add("train", "margin", torch.tensor(float("nan")), weight=0.0)
    for rows in (8, 4, 0):
        trainer.ledger.add("train", "pairs", rows)
    assert trainer.ledger.pop("train") == {"margin": 2.0, "pairs": 12.0}


def alive_children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rpartition(")")[2].split()[:2]
            if int(ppid) == pid and state != "Z":
                found.append(int(entry))
    return found


def is_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _slow_convert_range(*args, **kwargs):
    """A JSON→Arrow range reader that sleeps first (module level: the pool pickles it by name)."""
    import time

    time.sleep(600)
    return convert_range(*args, **kwargs)


SLOW_CONVERSION = """
import sys, time
from hnc_clip.data import arrow_cache
real = arrow_cache.convert_range
def slow(*args, **kwargs):
    time.sleep(600)
    return real(*args, **kwargs)
arrow_cache.convert_range = slow
arrow_cache.load_hnc_pairs(sys.argv[1], cache_dir=sys.argv[2], num_proc=2)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")
def test_a_signal_during_conversion_takes_its_workers_along_and_leaves_no_cache(tmp_path, tiny_clip_dir,
                                                                                 sample_image_dir, monkeypatch):
    """SIGTERM while 2 conversion workers run, before training (the run's handler is in place from its start):
    the run stops at once (`Preempted`, exit 143), the workers are terminated and the temporary cache folder is
    removed. SIGKILL: the workers die with their parent; the folder it could not remove goes with the next
    conversion. (Workers used to be left blocked forever, ~535 MB each.)"""
    import threading

    from hnc_clip.callbacks import Preempted
    from hnc_clip.data import arrow_cache

    cache = tmp_path / "cache" / "hnc_pairs"
    monkeypatch.setattr(arrow_cache, "convert_range", _slow_convert_range)
    seen = []
    # children an earlier test of this session left (a resource tracker, a worker pool) are not this run's workers
    before = set(alive_children(os.getpid()))

    def workers() -> list[int]:
        return [pid for pid in alive_children(os.getpid()) if pid not in before]

    def signal_once_converting():
        if wait_for(lambda: len(workers()) >= 2, timeout=120):
            seen.extend(workers())
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_once_converting, daemon=True).start()
    flags = train_flags(tmp_path, tiny_clip_dir, sample_image_dir, tmp_path / "out", "--preprocessing_num_workers",
                        "2")  # fmt: skip
    with pytest.raises(Preempted) as stopped:
        train_app.main(*train_app.parse_args(flags))
    assert stopped.value.code == 143 and len(seen) >= 2
    assert wait_for(lambda: not any(is_alive(w) for w in seen), timeout=30), "workers outlived the run"
    assert not [p.name for p in cache.iterdir() if ".incomplete-" in p.name]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run put the handler back

    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERSION, str(TRAIN_SAMPLE), str(tmp_path / "cache")],
                            cwd=REPO, env=ENV)  # fmt: skip
    try:
        assert wait_for(lambda: len(alive_children(proc.pid)) >= 2, timeout=120), "no conversion workers"
        workers = alive_children(proc.pid)
        proc.kill()
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert wait_for(lambda: not any(is_alive(w) for w in workers), timeout=30), "workers outlived their parent"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len([p for p in cache.iterdir() if ".incomplete-" in p.name]) == 1
    monkeypatch.undo()
    load_hnc_pairs(str(TRAIN_SAMPLE), cache_dir=str(tmp_path / "cache"))
    assert not [p for p in cache.iterdir() if ".incomplete-" in p.name]


def test_max_text_length_beyond_the_models_positions_is_refused_at_start(tmp_path, tiny_clip_dir, sample_image_dir,
                                                                         monkeypatch):
    """The position table has `max_position_embeddings` rows: a longer cut fails at the first long caption, hours in.
    Refused once the model's config is known, before any data is converted, with both numbers."""
    flags = train_flags(tmp_path, tiny_clip_dir, sample_image_dir, tmp_path / "out", "--max_text_length", "1000")
    model_args, data_args, training_args = train_app.parse_args(flags)
    monkeypatch.setattr(train_app, "prepare_split", lambda *a, **k: pytest.fail("data converted before the check"))
    with pytest.raises(ValueError, match=r"--max_text_length 1000 is more than the text model's 32 positions"):
        train_app.main(model_args, data_args, training_args)
