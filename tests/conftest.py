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

from .helpers import TEST_SAMPLE, TRAIN_SAMPLE, write_placeholder_images  # noqa: E402


@pytest.fixture(scope="session")
def sample_pairs():
    from hnc_clip.data.hnc import iter_hnc_pairs

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


@pytest.fixture(scope="session")
def _tiny_siglip_dir(tmp_path_factory, sample_pairs) -> Path:
    from hnc_clip.tiny import save_tiny_siglip

    texts = [t for split in sample_pairs.values() for p in split for t in (p["positive"], p["negative"])]
    out = tmp_path_factory.mktemp("tiny_siglip")
    save_tiny_siglip(str(out), texts, image_size=32, hidden_size=32, num_layers=2)
    return out


@pytest.fixture
def tiny_siglip_dir(_tiny_siglip_dir, tmp_path) -> Path:
    """A fresh copy per test of a tiny SigLIP (+ processor, SigLIP's tokenizer layout) for the sample captions."""
    dst = tmp_path / "tiny_siglip"
    shutil.copytree(_tiny_siglip_dir, dst)
    return dst


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation-suite fixtures (eval_ prefix)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def eval_sample_files() -> dict[str, str]:
    """{"test": hnc_test_sample.json, "train": hnc_train_sample.json} as strings."""
    return {"test": str(TEST_SAMPLE), "train": str(TRAIN_SAMPLE)}


@pytest.fixture(scope="session")
def eval_sample_texts(eval_sample_files) -> list[str]:
    """Every caption of both samples, so a tiny word-level tokenizer knows their words."""
    import json

    texts = []
    for path in eval_sample_files.values():
        with open(path, encoding="utf-8") as f:
            for entry in json.load(f).values():
                captions = entry["captions"].values() if "captions" in entry else entry.values()
                texts.extend(c["caption"] for c in captions)
    return texts


@pytest.fixture(scope="session")
def eval_sample_image_dir(tmp_path_factory, eval_sample_files) -> str:
    """Placeholder images under the file names both samples use (`<image_id>.jpg`)."""
    import json

    files = []
    for path in eval_sample_files.values():
        with open(path, encoding="utf-8") as f:
            files.extend(k if k.endswith(".jpg") else f"{k}.jpg" for k in json.load(f))
    return str(write_placeholder_images(tmp_path_factory.mktemp("eval_images"), files))


def _eval_tiny_clip(tmp_path_factory, texts: list[str], name: str, seed: int) -> str:
    from hnc_clip.evaluation.zeroshot_data import DEFAULT_TEMPLATES
    from hnc_clip.tiny import save_tiny_clip

    vocab_texts = texts + list(DEFAULT_TEMPLATES) + ["cat dog house"]
    return save_tiny_clip(str(tmp_path_factory.mktemp(name)), vocab_texts, seed=seed)


@pytest.fixture(scope="session")
def eval_tiny_clip_dir(tmp_path_factory, eval_sample_texts) -> str:
    """A tiny CLIP (+ processor) saved once per session; treat as read-only (copy it before writing a card)."""
    return _eval_tiny_clip(tmp_path_factory, eval_sample_texts, "eval_tiny_clip", seed=0)


@pytest.fixture(scope="session")
def eval_tuned_clip_dir(tmp_path_factory, eval_sample_texts) -> str:
    """Same architecture as `eval_tiny_clip_dir`, other weights: stands in for a fine-tuned checkpoint."""
    return _eval_tiny_clip(tmp_path_factory, eval_sample_texts, "eval_tuned_clip", seed=1)


@pytest.fixture(scope="session")
def eval_zeroshot_dir(tmp_path_factory) -> str:
    """An image folder with three classes (`cat`, `dog`, `dog_house`) of four images each."""
    out = tmp_path_factory.mktemp("eval_zeroshot")
    for c, folder in enumerate(("cat", "dog", "dog_house")):
        (out / folder).mkdir()
        for i in range(4):
            Image.new("RGB", (36, 36), (80 * c, 40 * i, 200 - 60 * c)).save(out / folder / f"{i}.png")
    return str(out)


@pytest.fixture
def eval_single_thread():
    """Run a test with one torch thread (restored after): the tiny models are latency-bound, and on a shared 2-core
    machine two threads contend and run ~5x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
