"""HNC JSON parsing (both schemas), the Arrow cache, filters, the image join and bad input."""

from __future__ import annotations

import json
import logging
from collections import Counter
from types import SimpleNamespace

import pytest
from PIL import Image

from hnc_clip.data import (
    EmptySplitError,
    ImageJoin,
    ImageLoadError,
    build_split,
    drop_missing_images,
    load_hnc_pairs,
    select_pairs,
)
from hnc_clip.hnc_json import TEST_SCHEMA, TRAIN_SCHEMA, HncFormatError, detect_schema, iter_hnc_pairs
from hnc_clip.tiny import build_image_processor

from .conftest import TEST_SAMPLE, TRAIN_SAMPLE, write_placeholder_images


def data_args(image_dir, **kw):
    base = dict(caption_types=None, image_dir=str(image_dir), on_missing_image="skip", preprocessing_num_workers=None,
                overwrite_cache=False)
    return SimpleNamespace(**{**base, **kw})


def test_schemas_detected_and_counted():
    assert detect_schema(str(TRAIN_SAMPLE)) == TRAIN_SCHEMA
    assert detect_schema(str(TEST_SAMPLE)) == TEST_SCHEMA
    skips = Counter()
    train = list(iter_hnc_pairs(str(TRAIN_SAMPLE), skips=skips))
    assert len(train) == 594 and not skips  # README: 594 positive/negative pairs over 5 images
    assert len({p["image_id"] for p in train}) == 5
    assert len({p["type"] for p in train}) == 17
    test = list(iter_hnc_pairs(str(TEST_SAMPLE)))
    assert len(test) == 872 and len({p["image_file"] for p in test}) == 100


def test_train_pairs_follow_cpt_p_id():
    raw = json.loads(TRAIN_SAMPLE.read_text())
    for pair in list(iter_hnc_pairs(str(TRAIN_SAMPLE)))[:50]:
        image_id, pos_id, neg_id = pair["pair_id"].split("/")
        caps = raw[image_id]["captions"]
        assert caps[neg_id]["cpt_p_id"] == int(pos_id)  # int pointer → string key
        assert caps[pos_id]["caption"] == pair["positive"] and caps[pos_id]["label"] == 1
        assert caps[neg_id]["caption"] == pair["negative"] and caps[neg_id]["label"] == 0
        assert pair["image_file"] == f"{image_id}.jpg"


def test_test_pairs_are_consecutive():
    raw = json.loads(TEST_SAMPLE.read_text())
    pair = next(iter_hnc_pairs(str(TEST_SAMPLE)))
    entry = raw[pair["image_file"]]
    assert (pair["positive"], pair["negative"]) == (entry["0"]["caption"], entry["1"]["caption"])


def write(tmp_path, obj, name="f.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def cap(text, label, cpt=None, type_="relation"):
    return {"caption": text, "label": label, "type": type_, "cpt_p_id": cpt}


def test_bad_pointers_and_captions_are_counted(tmp_path):
    path = write(tmp_path, {"img1": {"captions": {
        "1": cap("the cup is left of the plate", 1),
        "2": cap("the cup is right of the plate", 0, 1),
        "3": cap("a dangling negative", 0, 99),  # points nowhere
        "4": cap("a lonely positive", 1),  # no negative
        "5": cap("", 1),
        "6": cap("negative of an empty positive", 0, 5),
    }}})
    skips = Counter()
    pairs = list(iter_hnc_pairs(path, skips=skips))
    assert [p["negative"] for p in pairs] == ["the cup is right of the plate"]
    assert skips == Counter(negative_without_positive=1, empty_caption=1, positive_without_negative=2)


def test_invalid_json_names_file_and_position(tmp_path):
    path = write(tmp_path, '{"img1": {"captions": {"1": {"caption": "x", "label": 1,, }}}}')
    with pytest.raises(HncFormatError, match=r"f\.json: invalid JSON near byte \d+ \(.+\)"):
        list(iter_hnc_pairs(path))
    truncated = write(tmp_path, TRAIN_SAMPLE.read_text()[:5000], "trunc.json")
    with pytest.raises(HncFormatError, match="trunc.json: invalid JSON"):
        list(iter_hnc_pairs(truncated))


def test_unknown_schema_lists_expected_shapes(tmp_path):
    path = write(tmp_path, [{"image": "a.jpg", "caption": "x"}])
    with pytest.raises(HncFormatError, match="Expected one of: hnc_train.*hnc_test"):
        detect_schema(path)
    with pytest.raises(HncFormatError, match="not an HNC file"):
        detect_schema(write(tmp_path, {"a": {"b": 1}}, "g.json"))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="HNC file not found: /no/such.json"):
        detect_schema("/no/such.json")


def test_arrow_cache_roundtrip_and_invalidation(tmp_path):
    src = tmp_path / "train.json"
    src.write_text(TRAIN_SAMPLE.read_text())
    ds = load_hnc_pairs(str(src), cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 594 and ds[0]["image_file"].endswith(".jpg")
    # Editing the file must not serve the stale cache.
    raw = json.loads(src.read_text())
    raw.pop(next(iter(raw)))
    src.write_text(json.dumps(raw))
    assert len(load_hnc_pairs(str(src), cache_dir=str(tmp_path / "cache"))) < 594


def test_skips_are_summarised_once(tmp_path, caplog):
    path = write(tmp_path, {"i": {"captions": {"1": cap("a b", 1), "2": cap("a c", 0, 1), "3": cap("x", 0, 42)}}})
    with caplog.at_level(logging.WARNING, logger="hnc_clip.data"):
        ds = load_hnc_pairs(path, cache_dir=str(tmp_path / "c"))
    assert len(ds) == 1
    lines = [r.message for r in caplog.records if "skipped" in r.message]
    assert lines == [f"{path}: kept 1 pairs, skipped 1 (negative_without_positive=1)"]


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


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_non_rgb_images_become_rgb(tmp_path, mode):
    Image.new(mode, (20, 10)).save(tmp_path / "x.jpg" if mode in ("L", "CMYK") else tmp_path / "x.png")
    name = "x.jpg" if mode in ("L", "CMYK") else "x.png"
    out = ImageJoin(str(tmp_path), build_image_processor(32))({"image_file": [name]})
    assert tuple(out["pixel_values"][0].shape) == (3, 32, 32)


def test_corrupt_and_empty_images_become_none_or_error(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.jpg")
    join = ImageJoin(str(tmp_path), build_image_processor(32))
    out = join({"image_file": ["zero.jpg", "ok.jpg", "bad.jpg", "gone.jpg"]})
    assert [p is None for p in out["pixel_values"]] == [True, False, True, True]
    with pytest.raises(ImageLoadError, match="cannot read image .*zero.jpg"):
        ImageJoin(str(tmp_path), build_image_processor(32), on_missing="error")({"image_file": ["zero.jpg"]})
