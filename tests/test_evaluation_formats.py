"""Input formats of the evaluation suite: detection, parsing into pair records, retrieval galleries, errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image

from hnc_clip.evaluation.formats import (
    ARO_ATTRIBUTION,
    ARO_RELATION,
    COCO_KARPATHY,
    FORMAT_SHAPES,
    STRUCTURE_CLIP,
    SUGARCREPE,
    UnknownFormatError,
    detect_format,
    load_image_captions,
    load_pairs,
)
from hnc_clip.evaluation.images import ImageRef, load_image, resolve_image


def _write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_hnc_samples_detected_and_parsed(eval_sample_files):
    assert detect_format(eval_sample_files["test"]) == "hnc_test"
    assert detect_format(eval_sample_files["train"]) == "hnc_train"
    test_pairs = load_pairs(eval_sample_files["test"])
    train_pairs = load_pairs(eval_sample_files["train"])
    assert (len(test_pairs), len(train_pairs)) == (872, 594)  # as documented in tests/data/README.md
    assert len({p["image_file"] for p in test_pairs}) == 100
    assert len({p["image_file"] for p in train_pairs}) == 5
    assert all(p["bbox"] is None and p["image_file"].endswith(".jpg") for p in test_pairs + train_pairs)
    both = load_pairs([eval_sample_files["test"], eval_sample_files["train"]], max_pairs=900)
    assert len(both) == 900


def test_structure_clip_one_pair_per_negative(tmp_path):
    path = _write(
        tmp_path / "coco_neg.json",
        [
            {"image": "val2014/a.jpg", "text": "a dog on a mat", "neg_text": ["a mat on a dog", "a cat on a mat"]},
            {"image": "val2014/b.jpg", "text": "red car", "neg_text": "blue car"},
        ],
    )
    assert detect_format(path) == STRUCTURE_CLIP
    pairs = load_pairs(path)
    assert [(p["image_file"], p["positive"], p["negative"]) for p in pairs] == [
        ("val2014/a.jpg", "a dog on a mat", "a mat on a dog"),
        ("val2014/a.jpg", "a dog on a mat", "a cat on a mat"),
        ("val2014/b.jpg", "red car", "blue car"),
    ]
    assert {p["type"] for p in pairs} == {STRUCTURE_CLIP}
    assert len({p["pair_id"] for p in pairs}) == 3


def test_sugarcrepe_type_is_the_subset_file_name(tmp_path):
    data = {
        "0": {
            "filename": "000000001.jpg",
            "caption": "a man riding a horse",
            "negative_caption": "a horse riding a man",
        },
        "1": {"filename": "000000002.jpg", "caption": "two cats", "negative_caption": "two dogs"},
    }
    path = _write(tmp_path / "swap_obj.json", data)
    assert detect_format(path) == SUGARCREPE
    pairs = load_pairs(path)
    assert [p["type"] for p in pairs] == ["swap_obj", "swap_obj"]
    assert pairs[0]["negative"] == "a horse riding a man" and pairs[1]["image_file"] == "000000002.jpg"


def test_aro_relation_and_attribution(tmp_path):
    box = {"bbox_x": 2, "bbox_y": 4, "bbox_w": 10, "bbox_h": 6}
    rel = _write(
        tmp_path / "visual_genome_relation.json",
        [
            {
                "image_id": "7",
                "image_path": "7.jpg",
                "true_caption": "the cup is on the table",
                "false_caption": "the table is on the cup",
                "relation_name": "on",
                **box,
            }
        ],
    )
    att = _write(
        tmp_path / "visual_genome_attribution.json",
        [
            {
                "image_id": "8",
                "image_path": "images/8.jpg",
                "true_caption": "the white cat and the black dog",
                "false_caption": "the black cat and the white dog",
                "attributes": ["white", "black"],
                **box,
            }
        ],
    )
    assert detect_format(rel) == ARO_RELATION
    assert detect_format(att) == ARO_ATTRIBUTION
    (r,) = load_pairs(rel)
    (a,) = load_pairs(att)
    assert r["type"] == "on" and r["bbox"] == (2.0, 4.0, 10.0, 6.0)
    assert a["type"] == "white_black" and a["image_file"] == "images/8.jpg"


def test_aro_crop_matches_bbox(tmp_path):
    image = Image.new("RGB", (40, 30), (0, 0, 0))
    image.paste((255, 0, 0), (2, 4, 12, 10))  # the box region is red
    image.save(tmp_path / "8.png")
    # image_path with a sub-folder the flat download lacks: resolved through its basename.
    ref = resolve_image(str(tmp_path), ImageRef("images/8.png", (2, 4, 10, 6)))
    crop = load_image(ref)
    assert crop.size == (10, 6)
    assert set(crop.getdata()) == {(255, 0, 0)}
    assert resolve_image(str(tmp_path), ImageRef("missing.jpg")) is None


def test_coco_karpathy_retrieval_and_pairwise_refusal(tmp_path, caplog):
    path = _write(
        tmp_path / "coco_karpathy_test.json",
        [
            {"image": "val2014/1.jpg", "caption": ["a dog.", "a brown dog.", "a dog."]},
            {"image": "val2014/2.jpg", "caption": "a cat."},
            {"image": "val2014/2.jpg", "caption": "a grey cat."},  # train-style: one caption per record
            {"image": "val2014/3.jpg"},  # no caption: skipped and counted
            {"image": "val2014/4.jpg", "caption": [" ", ""]},  # only empty captions: no gallery image
        ],
    )
    assert detect_format(path) == COCO_KARPATHY
    items = load_image_captions(path)
    assert "coco_karpathy_test.json: 1 records without 'image' and 'caption' skipped" in caplog.text
    assert [(i.image.file, i.captions) for i in items] == [
        ("val2014/1.jpg", ["a dog.", "a brown dog.", "a dog."]),  # every entry kept, as CLIP_benchmark
        ("val2014/2.jpg", ["a cat.", "a grey cat."]),
    ]
    with pytest.raises(UnknownFormatError, match="only works with --task retrieval"):
        load_pairs(path)


def test_hnc_retrieval_uses_unique_positives(eval_sample_files):
    items = load_image_captions(eval_sample_files["train"])
    pairs = load_pairs(eval_sample_files["train"])
    assert len(items) == 5
    for item in items:
        positives = {p["positive"] for p in pairs if p["image_file"] == item.image.file}
        assert sorted(item.captions) == sorted(positives)


def test_unknown_format_lists_every_format(tmp_path):
    path = _write(tmp_path / "weird.json", [{"img": "a.jpg", "sentence": "hello"}])
    with pytest.raises(UnknownFormatError) as err:
        detect_format(path)
    message = str(err.value)
    assert "weird.json" in message and "--data_format" in message
    for name in FORMAT_SHAPES:
        assert name in message


@pytest.mark.parametrize("content", ["{not json", "42", "[]", "{}"])
def test_broken_files_raise_unknown_format(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UnknownFormatError, match="Supported formats"):
        load_pairs(str(path))


def test_forced_format_and_bad_format_name(tmp_path):
    path = _write(tmp_path / "x.json", [{"image": "a.jpg", "text": "a b", "neg_text": "b a"}])
    assert len(load_pairs(path, data_format=STRUCTURE_CLIP)) == 1
    with pytest.raises(UnknownFormatError, match="unknown --data_format 'nope'"):
        load_pairs(path, data_format="nope")


def test_records_with_empty_captions_are_counted(tmp_path):
    from collections import Counter

    path = _write(
        tmp_path / "x.json",
        [{"image": "a.jpg", "text": "a b", "neg_text": ["", "b a"]}, {"image": "b.jpg", "text": "c"}],
    )
    skips = Counter()
    assert len(load_pairs(path, skips=skips)) == 1
    assert skips == {"empty_caption": 1, "record_missing_keys": 1}
    with pytest.raises(ValueError, match="no positive/negative pairs"):
        load_pairs(_write(tmp_path / "y.json", [{"image": "a.jpg", "text": "", "neg_text": "x"}]))


@pytest.mark.parametrize(
    "records, where",
    [
        ({"k": {"filename": "a.jpg", "caption": 5, "negative_caption": "b"}}, "record 'k': field 'caption' holds a "
         "number"),
        ([{"image": "a.jpg", "text": "a b", "neg_text": ["b a", None]}], "record 0: field 'neg_text' holds a list"),
        ([{"image_path": "a.jpg", "true_caption": "a", "false_caption": "b", "relation_name": "on", "bbox_x": "1",
           "bbox_y": 0, "bbox_w": 1, "bbox_h": 1}], "record 0: field 'bbox_x' holds a string"),
    ],
    ids=["sugarcrepe", "structure_clip", "aro"],
)
def test_a_field_of_the_wrong_type_names_file_record_and_field(tmp_path, records, where):
    """A caption that is not text used to become "" (counted as an empty caption) or reach the tokenizer."""
    from hnc_clip.evaluation.records import DataFileError

    path = _write(tmp_path / "data.json", records)
    with pytest.raises(DataFileError, match=f"data.json: {where}"):
        load_pairs(path)


@pytest.mark.parametrize(
    "content, why",
    [(b"", "empty file"), (b" \n", "empty file"), (b"[]", r"empty JSON list \(\[\]\)"),
     (b"{}", r"empty JSON object \(\{\}\)")],
)  # fmt: skip
def test_empty_files_say_which_and_a_byte_order_mark_is_read(tmp_path, content, why):
    """Empty, `[]` and `{}` files each say what they are, on the detection path and the forced-format one (which
    reads the file whole); a file with a UTF-8 byte order mark is valid JSON and is read."""
    from hnc_clip.evaluation.records import DataFileError

    path = tmp_path / "data.json"
    path.write_bytes(content)
    with pytest.raises(UnknownFormatError, match=why):
        load_pairs(str(path))
    with pytest.raises(DataFileError, match=why):
        load_pairs(str(path), data_format=STRUCTURE_CLIP)
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"image": "a.jpg", "text": "a b", "neg_text": "b a"}]).encode())
    assert [p["negative"] for p in load_pairs(str(path))] == ["b a"]
    assert [p["negative"] for p in load_pairs(str(path), data_format=STRUCTURE_CLIP)] == ["b a"]


def test_a_crop_box_is_bounded_before_anything_is_allocated(tmp_path):
    """PIL allocates the whole box, padding included: a 10x10 image with a 30,000² box from a data file took 2.7 GB.
    A box beyond the pixel bound, off the image or not finite is an image error now (counted as unreadable)."""
    from hnc_clip.data.images import IMAGE_ERRORS, ImageTooLargeError
    from hnc_clip.evaluation.images import crop_box

    image = Image.new("RGB", (10, 10))
    assert crop_box(image, (2, 2, 12, 4), max_pixels=100).size == (12, 4)  # past the border: padded, as ARO
    with pytest.raises(ImageTooLargeError, match=r"spans 1,000,000 pixels, more than the 10,000 allowed"):
        crop_box(image, (0, 0, 1000, 1000), max_pixels=10_000)
    for box, why in (((50, 50, 5, 5), "outside the 10x10 image"), ((0, float("nan"), 5, 5), "not finite")):
        with pytest.raises(IMAGE_ERRORS, match=why):
            crop_box(image, box)
    path = tmp_path / "small.png"
    image.save(path)
    with pytest.raises(ImageTooLargeError):
        load_image(ImageRef(str(path), (0, 0, 1e5, 1e5)))  # 10^10 pixels: refused at once


def test_an_aro_file_is_read_by_the_aro_benchmark_reader(tmp_path):
    """`--data_file visual_genome_relation.json` goes through the registry's ARO reader: a record without its type
    field is counted (it was typed 'unknown'), an attribute pair of one attribute is refused, as `--benchmark` does."""
    from hnc_clip.evaluation.records import DataFileError

    box = {"bbox_x": 0, "bbox_y": 0, "bbox_w": 4, "bbox_h": 4}
    rec = {"image_path": "1.jpg", "true_caption": "the cup is on a mat", "false_caption": "the mat is on a cup"}
    rel = _write(tmp_path / "rel.json", [{**rec, **box, "relation_name": "on"}, {**rec, **box}])
    skips = Counter()
    assert [p["type"] for p in load_pairs(rel, skips=skips)] == ["on"] and skips == {"record_missing_keys": 1}
    att = _write(tmp_path / "att.json", [{**rec, **box, "attributes": ["red"]}])
    with pytest.raises(DataFileError, match=r"att.json: record 0: field .attributes. holds 1 attributes"):
        load_pairs(att, data_format=ARO_ATTRIBUTION)
