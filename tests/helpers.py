"""Plain helpers and paths shared by the test files (fixtures live in `tests/conftest.py`).

A test file imports shared code from here, never from another test file (`tests/test_layers.py` enforces). Heavy
imports sit inside the helpers that need them: `tests/test_layers.py` and `tests/test_readme.py` import this module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from hnc_clip.arguments import HncTrainingArguments

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"  # the real-format HNC samples (tests/data/README.md); nothing outside the repo
TRAIN_SAMPLE = DATA / "hnc_train_sample.json"
TEST_SAMPLE = DATA / "hnc_test_sample.json"


def write_placeholder_images(image_dir: Path, files, size=(40, 30)) -> Path:
    """One small solid-colour JPEG per file name (GQA images are not shipped)."""
    from PIL import Image

    image_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sorted(set(files))):
        Image.new("RGB", size, ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(image_dir / name)
    return image_dir


def copy_images(src, dst, corrupt=()) -> Path:
    """`src`'s images into `dst`, the names in `corrupt` replaced by git-lfs pointer files (what a clone without
    `git lfs pull` holds)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:0123abcd\nsize 51234\n"
        (dst / f.name).write_bytes(pointer if f.name in corrupt or corrupt == "all" else f.read_bytes())
    return dst


# --- training runs: one `main()` on the real-format sample, and its saved weights


def run(tmp_path, model_dir, image_dir, *extra: str) -> tuple[dict, str]:
    from hnc_clip.scripts import train as train_app

    out = tmp_path / "out"
    argv = [
        "--model_name_or_path", str(model_dir), "--train_file", str(TRAIN_SAMPLE), "--image_dir", str(image_dir),
        "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--do_train", "--max_steps", "3",
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--logging_steps", "1",
        "--save_strategy", "no", "--use_cpu", "--dataloader_num_workers", "0", "--seed", "0", *extra,
    ]
    return train_app.main(*train_app.parse_args(argv)), str(out)


def train_flags(tmp_path, model_dir, image_dir, out, *extra):
    return [
        "--model_name_or_path", str(model_dir), "--train_file", str(TRAIN_SAMPLE), "--image_dir", str(image_dir),
        "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--do_train", "--max_steps", "6",
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--logging_steps", "1", "--use_cpu",
        "--dataloader_num_workers", "0", "--seed", "3", "--save_strategy", "steps", "--save_steps", "3",
        "--report_to", "none", *extra,
    ]


def weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(f"{path}/model.safetensors")


def changed(before: dict, after: dict) -> set[str]:
    import torch

    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def training_args(tmp_path, **kw) -> HncTrainingArguments:
    from hnc_clip.arguments import HncTrainingArguments

    return HncTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)


def tiny(seed=0):
    """A float64 tiny CLIP over `tests/dist_parity.py`'s vocabulary (the gradient-parity tests' model)."""
    from hnc_clip.tiny import build_tiny_clip

    from .dist_parity import VOCAB

    model = build_tiny_clip(VOCAB, image_size=32, patch_size=8, hidden_size=32, projection_dim=16, seed=seed)
    return model.double()


# --- two local processes over gloo


def free_port() -> str:
    """A port nobody listens on now (a fixed one can be taken, or still in TIME_WAIT from the previous launch)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


# Failures of the two local processes' plumbing before any work (a port taken between `free_port` and the launch, a
# peer reset while connecting): infrastructure, not the code under test, so the launch is retried once on a new port.
RENDEZVOUS_ERRORS = ("Address already in use", "EADDRINUSE", "DistNetworkError", "Connection reset by peer",
                     "Connection refused")
# A process aborting at interpreter exit after its work (pytorch/pytorch#179291; seen in fresh-clone CI runs even
# with the process group destroyed): retried only by a caller that says how to undo what the first try wrote.
EXIT_ABORT = "terminate called without an active exception"


def accelerate_launch(*script_and_args: str, undo=None) -> subprocess.CompletedProcess:
    """`accelerate launch` two gloo processes on this CPU machine; asserts success and returns the process. A run that
    failed to meet is retried once on a new port; one that aborted at exit too, after `undo()` removed its output."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    for attempt in range(2):
        cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(),
               *script_and_args]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        met = not any(e in proc.stderr for e in RENDEZVOUS_ERRORS)
        if proc.returncode == 0 or attempt == 1 or (met and (undo is None or EXIT_ABORT not in proc.stderr)):
            break
        why = "rendezvous failed" if not met else "aborted at exit"
        print(f"{why}, retrying on a new port:\n{proc.stderr[-2000:]}")
        if undo is not None:
            undo()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


# --- the demo's synthetic world, small


def tiny_world(root: Path, **sizes) -> dict:
    """A small synthetic world (`hnc_clip.demo.world`, 24 training scenes; `sizes`: its other counts) and a
    one-layer CLIP whose tokenizer knows its words: {"world": folder, "model": folder}."""
    from hnc_clip.demo.world import make_world, save_world_model

    make_world(str(root / "world"), num_train_images=24, show_progress=False, **sizes)
    model = save_world_model(str(root / "world"), str(root / "init"), hidden_size=32, num_layers=1, num_heads=2,
                             projection_dim=16, text_num_layers=1)  # fmt: skip
    return {"world": str(root / "world"), "model": model}
