"""The HNC schemas (`hnc_clip.data.hnc`): both readers on the real-format samples and on bad input, and the writer."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hnc_clip.data.hnc import TEST_SCHEMA, TRAIN_SCHEMA, HncFormatError, detect_schema, iter_hnc_pairs

from .helpers import TEST_SAMPLE, TRAIN_SAMPLE


def write(tmp_path, obj, name="f.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)

def cap(text, label, cpt=None, type_="relation"):
    return {"caption": text, "label": label, "type": type_, "cpt_p_id": cpt}

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


def test_writer_round_trips_through_the_reader(tmp_path):
    """The one writer: its bytes are `json.dump` of the whole object, and the reader gives back every pair, in both
    schemas (train: `cpt_p_id` an int pointing at a string key; test: positive at 2k, negative at 2k+1)."""
    from hnc_clip.data.hnc import HncPair, hnc_test_entry, hnc_train_entry, write_hnc

    pairs = {f"img{i}": [HncPair(f"a cup {i} {k}", f"a plate {i} {k}", f"type{k}", ["cup", "plate"]) for k in range(3)]
             for i in range(4)}  # fmt: skip
    train = {key: hnc_train_entry(p, first_caption_id=6 * i) for i, (key, p) in enumerate(pairs.items())}
    test = {f"{key}.jpg": hnc_test_entry(p) for key, p in pairs.items()}
    for schema, entries in ((TRAIN_SCHEMA, train), (TEST_SCHEMA, test)):
        path = write_hnc(str(tmp_path / f"{schema}.json"), entries)
        assert open(path, encoding="utf-8").read() == json.dumps(entries, ensure_ascii=False) + "\n"
        assert detect_schema(path) == schema
        got = [(r["image_id"], r["positive"], r["negative"], r["type"]) for r in iter_hnc_pairs(path)]
        want = [(key, p.positive, p.negative, p.type) for key, ps in pairs.items() for p in ps]
        assert got == want
    negative = train["img1"]["captions"]["7"]
    assert negative["cpt_p_id"] == 6 and type(negative["cpt_p_id"]) is int and negative["replaced"] == ["cup", "plate"]


def test_writer_leaves_no_file_when_interrupted(tmp_path):
    from hnc_clip.data.hnc import HncPair, HncWriter, hnc_train_entry

    path = tmp_path / "f.json"
    with pytest.raises(RuntimeError), HncWriter(str(path)) as writer:
        writer.add("img", hnc_train_entry([HncPair("a", "b")]))
        raise RuntimeError("killed midway")
    assert list(tmp_path.iterdir()) == []


def test_test_schema_pairs_by_key_not_by_position(tmp_path):
    """Keys 0, 1, 2, 5: the positive at 2k pairs with the negative at 2k+1, so (0, 1) is a pair and 2 and 5 are
    captions without a partner (counted); sorting by position used to pair 2 with 5."""
    entry = {"0": cap("the cup is left of the plate", 1), "1": cap("the cup is right of the plate", 0),
             "2": cap("a red mug", 1), "5": cap("a blue bowl", 0)}  # fmt: skip
    skips = Counter()
    pairs = list(iter_hnc_pairs(write(tmp_path, {"x.jpg": entry}), TEST_SCHEMA, skips))
    assert [(p["positive"], p["negative"], p["pair_id"]) for p in pairs] == [
        ("the cup is left of the plate", "the cup is right of the plate", "x/0/1")]
    assert skips == Counter(test_caption_without_partner=2)


def test_every_dropped_caption_and_entry_is_counted_by_reason(tmp_path):
    """Nothing vanishes: each malformed piece of either schema is one count under a named reason (a `captions` list
    used to escape as AttributeError, non-object captions and labels other than 0/1 vanished uncounted)."""
    train = {
        "ok": {"captions": {"1": cap("a cup", 1), "2": cap("a mug", 0, 1)}},
        "no_captions": {"text": "x"},
        "captions_list": {"captions": [cap("a cup", 1)]},
        "not_an_object": [1, 2],
        "bad_records": {"captions": {"1": "a cup", "2": cap("a mug", 2), "3": {"caption": "no label"},
                                     "4": cap("a cup", 1), "5": cap("a plate", 0, 4)}},
    }  # fmt: skip
    skips = Counter()
    pairs = list(iter_hnc_pairs(write(tmp_path, train), TRAIN_SCHEMA, skips))
    assert [p["pair_id"] for p in pairs] == ["ok/1/2", "bad_records/4/5"]
    assert skips == Counter(image_entry_without_captions=2, image_entry_not_an_object=1, caption_not_an_object=1,
                            caption_label_not_0_or_1=2)  # fmt: skip
    test = {"x.jpg": {"0": cap("a cup", 1), "1": cap("a mug", 0), "01": cap("a cup", 1), "-3": cap("a", 0),
                      "2": "a cup", "4": cap("a bowl", 0), "5": cap("a dish", 1)}}  # fmt: skip
    skips = Counter()
    pairs = list(iter_hnc_pairs(write(tmp_path, test, "t.json"), TEST_SCHEMA, skips))
    assert [p["pair_id"] for p in pairs] == ["x/0/1"]
    assert skips == Counter(test_key_not_an_index=2, caption_not_an_object=1, test_pair_labels_not_1_0=1)


@pytest.mark.parametrize("text, message", [
    ('{"a": {"captions": {"1": ' + "[" * 100_000 + "]" * 100_000 + "}}}", "nested too deeply"),
    ('{"a": {"captions": {"1": {"caption": "x", "label": ' + "9" * 5000 + "}}}}", "4300 digits"),
])  # fmt: skip
def test_any_malformed_json_is_a_format_error_with_file_and_byte(tmp_path, text, message):
    """Deep nesting (RecursionError in the C decoder) and over-long integers (a ValueError that is no decode error)
    become HncFormatError naming the file and the byte where the entry starts."""
    path = write(tmp_path, text, "bad.json")
    with pytest.raises(HncFormatError, match=rf"bad\.json: invalid JSON near byte \d+ \(.*{message}"):
        list(iter_hnc_pairs(path, TRAIN_SCHEMA))


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    from hnc_clip.data import load_hnc_pairs

    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + TRAIN_SAMPLE.read_bytes())
    assert detect_schema(str(path)) == TRAIN_SCHEMA
    assert [tuple(p.values()) for p in iter_hnc_pairs(str(path))] == [
        tuple(p.values()) for p in iter_hnc_pairs(str(TRAIN_SAMPLE))]
    assert len(load_hnc_pairs(str(path), cache_dir=str(tmp_path / "c"), num_proc=2)) == 594


@pytest.mark.parametrize("escape", ["\\ud800", "\\uDC00", "\\ud83d x"])
def test_a_lone_utf16_surrogate_is_a_format_error_with_file_and_byte(tmp_path, escape):
    """`"\\ud800"` is valid JSON but no Unicode text: the decoder returns a string that cannot be written as UTF-8
    (Arrow, the tokenizer). It is an HncFormatError naming the file and the escape's byte; a surrogate *pair* (an
    emoji written `\\ud83d\\ude00`) is text and is read."""
    from hnc_clip.data import load_hnc_pairs

    good = '"img0": {"captions": {"0": {"caption": "a cat \\ud83d\\ude00", "label": 1, "cpt_p_id": null}, '
    good += '"1": {"caption": "a dog", "label": 0, "cpt_p_id": 0}}}'
    bad = '"img1": {"captions": {"0": {"caption": "a ' + escape + ' cat", "label": 1, "cpt_p_id": null}, '
    bad += '"1": {"caption": "a dog", "label": 0, "cpt_p_id": 0}}}'
    text = "{" + good + ", " + bad + "}"
    path = write(tmp_path, text, "sur.json")
    byte = text.index(escape.split()[0], text.index('"img1"'))
    with pytest.raises(HncFormatError, match=rf"sur\.json: invalid JSON near byte {byte} \(.*surrogate"):
        list(iter_hnc_pairs(path, TRAIN_SCHEMA))
    with pytest.raises(HncFormatError, match=rf"sur\.json: invalid JSON near byte {byte} \(.*surrogate"):
        load_hnc_pairs(path, cache_dir=str(tmp_path / "c"))
    ok = write(tmp_path, "{" + good + "}", "ok.json")
    assert [p["positive"] for p in iter_hnc_pairs(ok, TRAIN_SCHEMA)] == ["a cat \U0001f600"]
