"""The output folder (`hnc_clip.output_dir`): one run's alone, locked against a concurrent run, checkpoints trusted
only when complete, the final model renamed into place, and a full disk said so."""

from __future__ import annotations

import errno
import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch
import transformers.modeling_utils

from hnc_clip.errors import DiskFullError, OutputDirInUseError
from hnc_clip.output_dir import COMPLETE_MARKER, FINAL_TMP, LOCK_FILE, OutputDirLock
from hnc_clip.scripts import train as train_app

from .helpers import train_flags, weights


def train(tmp_path, tiny_clip_dir, sample_image_dir, out, *extra):
    """`main()` for 6 steps, checkpoints at 3 and 6 (`train_flags`)."""
    return train_app.main(*train_app.parse_args(train_flags(tmp_path, tiny_clip_dir, sample_image_dir, out, *extra)))


def test_a_folder_holding_another_run_is_refused_unless_overwriting_or_resuming(tmp_path, tiny_clip_dir,
                                                                                 sample_image_dir, caplog):
    """A second run used to replace the finished model silently and leave the first run's checkpoints for
    `resume last`; now it is refused, naming what is there. --overwrite_output_dir deletes the old checkpoints
    first; resuming continues the run."""
    out = tmp_path / "out"
    one = ("--max_steps", "1", "--save_steps", "1")
    train(tmp_path, tiny_clip_dir, sample_image_dir, out, *one)
    first = weights(out)
    with pytest.raises(OutputDirInUseError, match=r"holds another run \(checkpoint-1, model.safetensors.*"
                                                  r"--resume_from_checkpoint last.*--overwrite_output_dir"):
        train(tmp_path, tiny_clip_dir, sample_image_dir, out, *one)
    assert all(torch.equal(first[k], v) for k, v in weights(out).items())  # untouched
    (out / "checkpoint-1" / "marker-of-the-first-run").write_text("")
    with caplog.at_level(logging.WARNING, logger="hnc_clip.output_dir"):
        train(tmp_path, tiny_clip_dir, sample_image_dir, out, *one, "--overwrite_output_dir", "--seed", "4")
    assert "deleted 1 checkpoints" in caplog.text
    assert not (out / "checkpoint-1" / "marker-of-the-first-run").exists()  # the new run's checkpoint-1
    assert any(not torch.equal(first[k], v) for k, v in weights(out).items())
    results = train(tmp_path, tiny_clip_dir, sample_image_dir, out, "--max_steps", "2", "--save_steps", "1",
                    "--resume_from_checkpoint", "last")  # fmt: skip
    assert results["train_loss"] > 0 and (out / "checkpoint-2" / COMPLETE_MARKER).exists()


def test_a_concurrent_run_is_refused_and_a_stale_lock_is_not_a_lock(tmp_path, tiny_clip_dir, sample_image_dir):
    """flock on `.hnc-clip.lock`: held by another run (another open file description, as another process would
    hold it), a run stops at once naming the holder; the lock file a killed run leaves behind holds nothing."""
    out = tmp_path / "out"
    holder = OutputDirLock(str(out)).acquire()
    try:
        with pytest.raises(OutputDirInUseError, match=f"another run is writing to --output_dir .*pid {os.getpid()}"):
            train(tmp_path, tiny_clip_dir, sample_image_dir, out, "--max_steps", "1")
    finally:
        holder.release()
    assert not (out / "model.safetensors").exists()
    (out / LOCK_FILE).write_text("pid 999999 on some-host, since long ago\n")  # left by a killed run
    train(tmp_path, tiny_clip_dir, sample_image_dir, out, "--max_steps", "1", "--save_strategy", "no")
    assert (out / "model.safetensors").exists()
    OutputDirLock(str(out)).acquire().release()  # released at the end of the run


def test_resume_last_takes_the_newest_complete_checkpoint(tmp_path, caplog):
    """A checkpoint is trusted once marked complete (after every process wrote it): a newer one cut short (here a
    half-written model and no marker) is passed over with a warning; `get_last_checkpoint` picked it and crashed."""
    out = tmp_path / "out"
    for step, complete in ((3, True), (6, True), (9, False)):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"half" if not complete else b"whole")
        if complete:
            (out / f"checkpoint-{step}" / COMPLETE_MARKER).write_text("")
    args = SimpleNamespace(resume_from_checkpoint="last", output_dir=str(out))
    with caplog.at_level(logging.WARNING, logger="hnc_clip.output_dir"):
        assert train_app.resolve_checkpoint(args) == str(out / "checkpoint-6")
    assert "passing over checkpoint-9: not completely written" in caplog.text


def test_a_crash_while_checkpointing_leaves_a_checkpoint_resume_passes_over(tmp_path, tiny_clip_dir,
                                                                             sample_image_dir, monkeypatch):
    """The second checkpoint dies after its weights, before its optimizer state (what a kill mid-save leaves):
    `resume last` continues from the first one and the run finishes."""
    from hnc_clip.trainer import HncTrainer

    out = tmp_path / "out"
    real, calls = HncTrainer._save_optimizer_and_scheduler, {"n": 0}

    def dies_on_the_second(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed while saving")
        return real(self, output_dir)

    monkeypatch.setattr(HncTrainer, "_save_optimizer_and_scheduler", dies_on_the_second)
    steps = ("--max_steps", "2", "--save_steps", "1")
    with pytest.raises(RuntimeError, match="killed while saving"):
        train(tmp_path, tiny_clip_dir, sample_image_dir, out, *steps)
    partial = out / "checkpoint-2"
    assert (partial / "model.safetensors").exists() and not (partial / COMPLETE_MARKER).exists()
    monkeypatch.setattr(HncTrainer, "_save_optimizer_and_scheduler", real)
    train(tmp_path, tiny_clip_dir, sample_image_dir, out, *steps, "--resume_from_checkpoint", "last")
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (partial / COMPLETE_MARKER).exists()


def disk_fills_on_call(monkeypatch, fail_on: int) -> dict:
    """safetensors writes half a file, then ENOSPC, on the `fail_on`-th save (1-based)."""
    real, calls = transformers.modeling_utils.safe_save_file, {"n": 0}

    def save(tensors, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_on:
            with open(filename, "wb") as f:
                f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save)
    return calls


def test_a_full_disk_while_checkpointing_says_so_and_leaves_nothing_to_resume_from(tmp_path, tiny_clip_dir,
                                                                                    sample_image_dir, monkeypatch,
                                                                                    capsys):
    """ENOSPC in the second checkpoint: the run exits 1 with a message that says the disk is full and names the
    checkpoint a resume will use; the half checkpoint is removed."""
    out = tmp_path / "out"
    disk_fills_on_call(monkeypatch, fail_on=2)
    assert train_app.cli(train_flags(tmp_path, tiny_clip_dir, sample_image_dir, out)) == 1
    err = capsys.readouterr().err
    assert "No space left on device while saving checkpoint checkpoint-6" in err
    assert f"resume from {out}/checkpoint-3" in err
    assert not (out / "checkpoint-6").exists() and (out / "checkpoint-3" / COMPLETE_MARKER).exists()
    assert not (out / "model.safetensors").exists()


def test_a_full_disk_during_the_final_save_publishes_no_model(tmp_path, tiny_clip_dir, sample_image_dir,
                                                               monkeypatch):
    """The final model is written into a temporary folder and renamed into place: out of space (or killed) half-way,
    no half model appears in --output_dir and the temporary folder is gone; the checkpoints stay."""
    out = tmp_path / "out"
    disk_fills_on_call(monkeypatch, fail_on=3)  # checkpoint-3, checkpoint-6, then the final model
    full = "No space left on device while saving the final model.*resume from .*checkpoint-6"
    with pytest.raises(DiskFullError, match=full):
        train(tmp_path, tiny_clip_dir, sample_image_dir, out)
    assert not (out / "model.safetensors").exists() and not (out / FINAL_TMP).exists()
    assert (out / "checkpoint-6" / COMPLETE_MARKER).exists()


def _search(out, _):
    from hnc_clip.scripts import search

    return search.cli(["--model_name_or_path", "m", "--train_file", "t.json", "--validation_file", "v.json",
                       "--image_dir", "images", "--output_dir", str(out), "--use_cpu",
                       "--report_to", "none"])  # fmt: skip


def _convert(out, _):
    from hnc_clip.scripts import convert

    return convert.cli(["--checkpoint", "absent.safetensors", "--output_dir", str(out)])


def _evaluate(out, model):
    from hnc_clip.scripts import evaluate

    return evaluate.cli(["--model", model, "--data_file", "absent.json", "--output_dir", str(out)])


def _image_cache(out, model):
    from hnc_clip.scripts import build_image_cache

    return build_image_cache.cli(["--image_dir", "absent", "--output_dir", str(out), "--model_name_or_path", model])


@pytest.mark.parametrize("app", [_search, _convert, _evaluate, _image_cache], ids=lambda f: f.__name__[1:])
def test_every_application_claims_its_output_folder(app, tmp_path, tiny_clip_dir, capsys):
    """Only training used to lock its folder: two searches interleaved their trials, two evaluations overwrote each
    other's results. Each application now stops at once (exit 1, the holder named) when another run holds the
    folder, before it reads anything (the inputs here do not exist)."""
    out = tmp_path / "out"
    holder = OutputDirLock(str(out), app="hnc-clip-train").acquire()
    try:
        assert app(out, str(tiny_clip_dir)) == 1
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert f"another run is writing to --output_dir {out} (hnc-clip-train, pid {os.getpid()}" in err


def test_convert_refuses_to_replace_another_model_without_the_flag(tmp_path, capsys):
    """hnc-clip-convert used to write over whatever model --output_dir held; now it is refused, the model untouched,
    and --overwrite_output_dir lets the conversion through (here to the missing checkpoint's error)."""
    from hnc_clip.scripts import convert

    out = tmp_path / "model"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the first model")
    flags = ["--checkpoint", str(tmp_path / "absent.safetensors"), "--output_dir", str(out)]
    assert convert.cli(flags) == 1
    assert "holds another run's output (model.safetensors): pass --overwrite_output_dir" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == b"the first model"
    with pytest.raises(FileNotFoundError):
        convert.cli([*flags, "--overwrite_output_dir"])
