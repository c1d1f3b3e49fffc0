"""A split ready to train (`hnc_clip.data.pairs`): filters, missing images, empty splits."""

from __future__ import annotations

import json
import logging
from collections import Counter
from types import SimpleNamespace

import pytest

from hnc_clip.data import (
    EmptySplitError,
    ImageLoadError,
    build_split,
    drop_missing_images,
    load_hnc_pairs,
    select_pairs,
)

from .helpers import TRAIN_SAMPLE, write_placeholder_images


def data_args(image_dir, **kw):
    base = dict(caption_types=None, image_dir=str(image_dir), on_missing_image="skip", preprocessing_num_workers=None,
                overwrite_cache=False)
    return SimpleNamespace(**{**base, **kw})

def write(tmp_path, obj, name="f.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)

def cap(text, label, cpt=None, type_="relation"):
    return {"caption": text, "label": label, "type": type_, "cpt_p_id": cpt}

def test_select_pairs_filters_types_and_limits(tmp_path):
    ds = load_hnc_pairs(str(TRAIN_SAMPLE), cache_dir=str(tmp_path))
    rel = select_pairs(ds, ["relation_subj", "relation_obj"])
    assert set(rel["type"]) == {"relation_subj", "relation_obj"}
    assert len(rel) == Counter(ds["type"])["relation_subj"] + Counter(ds["type"])["relation_obj"]
    assert len(select_pairs(ds, None, max_samples=10)) == 10

def test_empty_split_after_filter_is_an_error(tmp_path, sample_image_dir):
    with pytest.raises(EmptySplitError, match="no pairs left"):
        build_split(str(TRAIN_SAMPLE), data_args(sample_image_dir, caption_types=["no_such_type"]), None,
                    cache_dir=str(tmp_path))

def test_image_dir_must_exist(tmp_path):
    ds = load_hnc_pairs(str(TRAIN_SAMPLE), cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--image_dir '/nope' does not exist"):
        drop_missing_images(ds, "/nope")

def test_missing_images_skipped_and_counted_or_error(tmp_path, caplog):
    ds = load_hnc_pairs(str(TRAIN_SAMPLE), cache_dir=str(tmp_path / "c"))
    files = sorted(set(ds["image_file"]))
    image_dir = write_placeholder_images(tmp_path / "img", files[1:])  # first image missing
    n_missing = Counter(ds["image_file"])[files[0]]
    with caplog.at_level(logging.WARNING, logger="hnc_clip.data"):
        kept = drop_missing_images(ds, str(image_dir), "skip")
    assert len(kept) == len(ds) - n_missing and files[0] not in set(kept["image_file"])
    assert any("1 of 5 images missing" in r.message and f"skipped {n_missing}" in r.message for r in caplog.records)
    with pytest.raises(ImageLoadError, match=f"1 of 5 images missing.*{files[0]}"):
        drop_missing_images(ds, str(image_dir), "error")


def test_too_many_missing_images_stop_before_training(tmp_path):
    """More than --max_skipped_fraction of the pairs without an image: refused at once, naming the count (a wrong
    --image_dir used to train on what was left, or on nothing)."""
    from hnc_clip.errors import TooManySkippedError

    ds = load_hnc_pairs(str(TRAIN_SAMPLE), cache_dir=str(tmp_path / "c"))
    files = sorted(set(ds["image_file"]))
    image_dir = write_placeholder_images(tmp_path / "img", files[2:])  # 2 of 5 images missing
    dropped = sum(Counter(ds["image_file"])[f] for f in files[:2])
    share = dropped / len(ds)
    assert len(drop_missing_images(ds, str(image_dir), max_skipped_fraction=share)) == len(ds) - dropped
    with pytest.raises(TooManySkippedError, match=f"{dropped} of {len(ds)} pairs .*--max_skipped_fraction 0.1"):
        drop_missing_images(ds, str(image_dir), max_skipped_fraction=0.1)
