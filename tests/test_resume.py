"""Resuming from a checkpoint that cannot continue the run (saved without its optimizer, another model's, cut
short), and a disk that fills during a checkpoint on each of its save paths: one clear message each, exit 1."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from hnc_clip.errors import CheckpointError
from hnc_clip.output_dir import COMPLETE_MARKER
from hnc_clip.scripts import train as train_app

from .helpers import train_flags


def train(tmp_path, model_dir, image_dir, out, *extra):
    flags = train_flags(tmp_path, model_dir, image_dir, out, "--max_steps", "2", "--save_steps", "1", *extra)
    return train_app.main(*train_app.parse_args(flags))


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def drop_a_key(path: Path) -> None:
    tensors = load_file(str(path))
    tensors.pop(sorted(k for k in tensors if "text_projection" in k)[0])
    tensors["vision_model.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(path), metadata={"format": "pt"})


DAMAGE = {
    "no optimizer": (lambda c: (c / "optimizer.pt").unlink(), r"has no optimizer\.pt"),
    "no scheduler": (lambda c: (c / "scheduler.pt").unlink(), r"has no scheduler\.pt"),
    "no trainer state": (lambda c: (c / "trainer_state.json").unlink(), r"has no trainer_state\.json"),
    "foreign weights": (
        lambda c: drop_a_key(c / "model.safetensors"),
        r"model\.safetensors does not hold this model's weights: 1 missing \(text_projection\.weight\), 1 unexpected "
        r"\(vision_model\.extra\.weight\)",
    ),
    "cut weights": (lambda c: cut(c / "model.safetensors"), r"model\.safetensors is damaged \(cut short\?"),
    "cut weights header": (lambda c: cut(c / "model.safetensors", 0.0001), r"model\.safetensors is damaged"),
    "cut optimizer": (lambda c: cut(c / "optimizer.pt"), r"optimizer\.pt is damaged \(cut short\?"),
    "cut scheduler": (lambda c: cut(c / "scheduler.pt"), r"scheduler\.pt is damaged \(cut short\?"),
    "cut trainer state": (lambda c: cut(c / "trainer_state.json"), r"trainer_state\.json is damaged \(cut short\?"),
    "cut rng state": (lambda c: cut(c / "rng_state.pth"), r"rng_state\.pth is damaged \(cut short\?"),
    "foreign optimizer": (
        lambda c: torch.save(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))]).state_dict(), c / "optimizer.pt"),
        r"its optimizer\.pt / scheduler\.pt do not fit this run \(ValueError",
    ),
}


def test_a_damaged_or_foreign_checkpoint_is_refused_with_one_message_each(tmp_path, tiny_clip_dir, sample_image_dir,
                                                                          capsys):
    """Each damage of a good checkpoint: `hnc-clip-train` exits 1 with one line naming the checkpoint and the file,
    before any step (no traceback from safetensors, torch.load or json; no silent restart of the optimizer or the
    schedule, no load_state_dict(strict=False) warning that leaves some weights at their initial values)."""
    train(tmp_path, tiny_clip_dir, sample_image_dir, tmp_path / "run")
    good = tmp_path / "run" / "checkpoint-1"
    for i, (name, (damage, message)) in enumerate(DAMAGE.items()):
        ckpt = tmp_path / f"damaged-{i}" / "checkpoint-1"
        shutil.copytree(good, ckpt)
        damage(ckpt)
        flags = train_flags(tmp_path, tiny_clip_dir, sample_image_dir, tmp_path / f"damaged-{i}", "--max_steps", "2",
                            "--save_steps", "1", "--resume_from_checkpoint", str(ckpt))  # fmt: skip
        assert train_app.cli(flags) == 1, name
        err = capsys.readouterr().err
        assert re.search(rf"hnc-clip-train: error: cannot resume from {re.escape(str(ckpt))}: .*{message}", err), (
            name, err)
        assert "Traceback" not in err and not (tmp_path / f"damaged-{i}" / "checkpoint-2").exists(), name


def test_a_checkpoint_saved_with_save_only_model_is_refused(tmp_path, tiny_clip_dir, sample_image_dir):
    """`--save_only_model` checkpoints hold no optimizer, scheduler or RNG state: resuming from one used to restart
    AdamW's moments and the LR schedule silently. The message says so and how to start from its weights."""
    train(tmp_path, tiny_clip_dir, sample_image_dir, tmp_path / "run", "--save_only_model")
    ckpt = tmp_path / "run" / "checkpoint-1"
    with pytest.raises(CheckpointError, match=rf"cannot resume from {re.escape(str(ckpt))}: it has no optimizer\.pt"
                       r".*--save_only_model.*--model_name_or_path"):  # fmt: skip
        train(tmp_path, tiny_clip_dir, sample_image_dir, tmp_path / "run", "--resume_from_checkpoint", str(ckpt))


def full_disk_at(monkeypatch, target: str, checkpoint: str, torch_message: bool = False) -> None:
    """Saving `target` into `checkpoint` writes part of it and fails as a full disk does: OSError(ENOSPC), or (torch's
    own zip writer) RuntimeError "file write failed" on a disk with no space left."""

    def fail(filename: str):
        Path(filename).write_bytes(b"\0" * 1000)
        if torch_message:
            monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 0))
            raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")  # fmt: skip
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    def hit(filename) -> bool:
        return Path(str(filename)).name == target and Path(str(filename)).parent.name == checkpoint

    real_save, real_safe = torch.save, transformers.modeling_utils.safe_save_file
    real_json = transformers.trainer.TrainerState.save_to_json

    def save(obj, f, *args, **kwargs):
        return fail(f) if hit(f) else real_save(obj, f, *args, **kwargs)

    def safe_save(tensors, filename, *args, **kwargs):
        return fail(filename) if hit(filename) else real_safe(tensors, filename, *args, **kwargs)

    def save_json(state, path):
        return fail(path) if hit(path) else real_json(state, path)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", safe_save)
    monkeypatch.setattr(transformers.trainer.TrainerState, "save_to_json", save_json)


@pytest.mark.parametrize("target, torch_message", [
    ("model.safetensors", False), ("optimizer.pt", False), ("scheduler.pt", False), ("rng_state.pth", False),
    ("trainer_state.json", False), ("optimizer.pt", True),
])  # fmt: skip
def test_a_full_disk_on_any_checkpoint_file_says_so_and_names_the_checkpoint_to_resume_from(
    tmp_path, tiny_clip_dir, sample_image_dir, monkeypatch, capsys, target, torch_message
):
    """Out of space on the weights, the optimizer, the scheduler, the RNG state or the trainer state of checkpoint-2:
    exit 1, one line that says "No space left on device" and which checkpoint a resume will use (checkpoint-1), and
    the half checkpoint-2 removed, so `--resume_from_checkpoint last` cannot meet it."""
    out = tmp_path / "out"
    full_disk_at(monkeypatch, target, "checkpoint-2", torch_message)
    flags = train_flags(tmp_path, tiny_clip_dir, sample_image_dir, out, "--max_steps", "3", "--save_steps", "1")
    assert train_app.cli(flags) == 1
    err = capsys.readouterr().err
    assert "hnc-clip-train: error: No space left on device while saving checkpoint checkpoint-2" in err, err
    assert f"resume from {out}/checkpoint-1 (--resume_from_checkpoint last)" in err and "Traceback" not in err
    assert not (out / "checkpoint-2").exists() and (out / "checkpoint-1" / COMPLETE_MARKER).exists()


def test_a_full_disk_after_the_final_model_says_the_model_is_saved(tmp_path, tiny_clip_dir, sample_image_dir,
                                                                   monkeypatch, capsys):
    """The run's own trainer_state.json, metrics and card are written after the model is published: out of space
    there is the same one line (exit 1), saying the model is saved."""
    out = tmp_path / "out"
    full_disk_at(monkeypatch, "trainer_state.json", "out")
    flags = train_flags(tmp_path, tiny_clip_dir, sample_image_dir, out, "--max_steps", "1", "--save_strategy", "no")
    assert train_app.cli(flags) == 1
    err = capsys.readouterr().err
    assert f"No space left on device while saving the trainer state to {out}" in err and "final model was saved" in err
    assert (out / "model.safetensors").exists() and "Traceback" not in err
