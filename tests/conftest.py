"""Shared test fixtures: everything offline, a tiny CLIP built in code, placeholder images.

Fixtures used by the training tests are defined here; evaluation fixtures carry an `eval_` prefix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
TRAIN_SAMPLE = SHARED_DATA / "hnc_train_sample.json"
TEST_SAMPLE = SHARED_DATA / "hnc_test_sample.json"


def write_placeholder_images(image_dir: Path, files, size=(40, 30)) -> Path:
    """One small solid-colour JPEG per file name (GQA images are not shipped)."""
    image_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sorted(set(files))):
        Image.new("RGB", size, ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(image_dir / name)
    return image_dir


@pytest.fixture(scope="session")
def sample_pairs():
    from hnc_clip.hnc_json import iter_hnc_pairs

    return {"train": list(iter_hnc_pairs(str(TRAIN_SAMPLE))), "test": list(iter_hnc_pairs(str(TEST_SAMPLE)))}


@pytest.fixture(scope="session")
def sample_image_dir(tmp_path_factory, sample_pairs) -> Path:
    files = [p["image_file"] for split in sample_pairs.values() for p in split]
    return write_placeholder_images(tmp_path_factory.mktemp("images"), files)


@pytest.fixture(scope="session")
def _tiny_clip_dir(tmp_path_factory, sample_pairs) -> Path:
    from hnc_clip.tiny import save_tiny_clip

    texts = [t for split in sample_pairs.values() for p in split for t in (p["positive"], p["negative"])]
    out = tmp_path_factory.mktemp("tiny_clip")
    save_tiny_clip(str(out), texts, image_size=32, hidden_size=32, num_layers=2, projection_dim=16)
    return out


@pytest.fixture
def tiny_clip_dir(_tiny_clip_dir, tmp_path) -> Path:
    """A fresh copy per test of a tiny CLIP (+ processor) whose vocabulary covers the sample captions."""
    dst = tmp_path / "tiny_clip"
    shutil.copytree(_tiny_clip_dir, dst)
    return dst
