"""The chunked JSON reader (`json_stream.MemberReader`) and the parallel conversion (`hnc_clip/data/arrow_cache.py`)
against the standard library's `json.load` and against the sequential conversion on files built to be awkward."""

import json
import logging
import os
import random
import re
from collections import Counter

import pytest

from hnc_clip.data import FEATURES, load_hnc_pairs
from hnc_clip.data.arrow_cache import convert_range
from hnc_clip.data.hnc import (
    TRAIN_SCHEMA,
    HncFormatError,
    iter_hnc_pairs,
    iter_members,
)

WORDS = ["cup", "plate", "naïve", "café", "左", "🙂", 'say "hi"', "back\\slash", "tab\there", "a, \"b\": {"]


def awkward_train_file(path, images=40, seed=0, fool=False, indent=None):
    """A train-schema file with non-ASCII text, escapes, numbers of every kind and, with `fool`, caption
    records holding a nested `"captions"` object: a member that looks like an image entry but is not one."""
    rng = random.Random(seed)
    data = {}
    for i in range(images):
        caps = {}
        for j in range(rng.randint(1, 6)):
            pos_id = 2 * j
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
            caps[str(pos_id)] = {"caption": text, "label": 1, "type": "relation", "cpt_p_id": None,
                                 "bboxes": {"7": {"x": rng.random() * 1e3, "y": -rng.randint(0, 10**12)}}}
            neg = {"caption": text + " not", "label": 0, "type": "relation", "cpt_p_id": pos_id, "n": 1.5e-7}
            if fool:
                neg["extra"] = {"captions": {}}
            caps[str(pos_id + 1)] = neg
        data[str(1000 + i)] = {"captions": caps}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=indent)
    return data


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_members_equal_json_load_at_any_chunk_size(tmp_path, chunk_bytes, indent):
    path = tmp_path / "f.json"
    data = awkward_train_file(path, images=12, indent=indent)
    assert list(iter_members(str(path), chunk_bytes=chunk_bytes)) == list(data.items())


def test_scalar_entries_split_across_chunks(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"a": 12345678901234567890, "b": -1.25e+300, "c": true, "d": null, "e": "x"}')
    expected = json.loads(path.read_text())
    for chunk in (1, 2, 3, 5):
        assert dict(iter_members(str(path), chunk_bytes=chunk)) == expected


@pytest.mark.parametrize("chunk_bytes", [3, 1 << 20])
def test_error_offset_is_in_bytes(tmp_path, chunk_bytes):
    prefix = '{"é🙂": {"captions": {}}, "x": {"captions": {"1": {"caption": "左", "label": 1,'
    path = tmp_path / "bad.json"
    path.write_text(prefix + ' ]}}}}', encoding="utf-8")
    error_byte = len(prefix.encode()) + 1  # the `]`
    with pytest.raises(HncFormatError) as err:
        list(iter_members(str(path), chunk_bytes=chunk_bytes))
    where = int(re.search(r"near byte ([\d,]+)", str(err.value)).group(1).replace(",", ""))
    assert where == error_byte


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a": {"captions": {}}', "not closed"),
        ('{"a": {"captions": {}}} x', "extra data"),
        ('{"a": {"captions": {}} "b": {}}', "expecting ','"),
        ('{1: {}}', "property name"),
        ('[{"a": 1}]', "not a JSON object"),
    ],
)
def test_structural_errors_are_named(tmp_path, text, message):
    path = tmp_path / "e.json"
    path.write_text(text)
    with pytest.raises(HncFormatError, match=message):
        list(iter_members(str(path), chunk_bytes=4))


def test_invalid_utf8_is_a_format_error(tmp_path):
    path = tmp_path / "u.json"
    path.write_bytes(b'{"a": {"captions": {"1": {"caption": "\xff\xfe", "label": 1}}}}')
    with pytest.raises(HncFormatError, match="not UTF-8"):
        list(iter_members(str(path)))


def test_one_huge_entry_is_refused_not_loaded(tmp_path):
    path = tmp_path / "nested.json"
    path.write_text(json.dumps({"data": {str(i): {"captions": {}} for i in range(5000)}}))
    with pytest.raises(HncFormatError, match="larger than 0 MiB"):
        list(iter_members(str(path), chunk_bytes=1024, max_entry_bytes=4096))


def _rows(ds):
    return [tuple(ds[c][i] for c in ds.column_names) for i in range(len(ds))]


@pytest.mark.parametrize("num_proc", [2, 3, 7])
def test_parallel_conversion_equals_sequential(tmp_path, num_proc, caplog):
    path = tmp_path / "train.json"
    awkward_train_file(path, images=60)
    expected = [tuple(p.values()) for p in iter_hnc_pairs(str(path))]
    with caplog.at_level(logging.INFO, logger="hnc_clip.data.arrow_cache"):
        ds = load_hnc_pairs(str(path), cache_dir=str(tmp_path / f"c{num_proc}"), num_proc=num_proc)
    assert f"converted in {num_proc} processes" in caplog.text  # the split was accepted, not the fallback
    assert len(ds.cache_files) > 1
    assert _rows(ds) == expected


def test_a_fooled_split_falls_back_to_one_process(tmp_path, caplog):
    path = tmp_path / "fool.json"
    awkward_train_file(path, images=60, fool=True)
    expected = [tuple(p.values()) for p in iter_hnc_pairs(str(path))]
    with caplog.at_level(logging.WARNING, logger="hnc_clip.data.arrow_cache"):
        ds = load_hnc_pairs(str(path), cache_dir=str(tmp_path / "c"), num_proc=3)
    assert "could not split the file cleanly" in caplog.text
    assert _rows(ds) == expected


def test_range_reader_reports_where_the_next_range_starts(tmp_path):
    path = tmp_path / "train.json"
    awkward_train_file(path, images=30)
    size = path.stat().st_size
    cut = size // 2
    first = convert_range(str(path), TRAIN_SCHEMA, 0, cut, str(tmp_path / "a.arrow"), FEATURES)
    second = convert_range(str(path), TRAIN_SCHEMA, cut, None, str(tmp_path / "b.arrow"), FEATURES)
    assert first.error is None and second.error is None
    assert first.next == second.first and first.next >= cut
    assert path.read_bytes()[first.next : first.next + 1] == b'"'  # a key starts there
    assert second.next is None  # the last range read to the end of the object
    assert first.rows + second.rows == sum(1 for _ in iter_hnc_pairs(str(path)))


def test_error_in_a_later_range_is_the_sequential_error(tmp_path):
    path = tmp_path / "late.json"
    awkward_train_file(path, images=60)
    text = path.read_text(encoding="utf-8")
    cut = text.rindex('"label": ') + len('"label": ')
    path.write_text(text[:cut] + "]" + text[cut:], encoding="utf-8")  # break the last image entry
    with pytest.raises(HncFormatError) as sequential:
        list(iter_members(str(path)))
    with pytest.raises(HncFormatError) as parallel:
        load_hnc_pairs(str(path), cache_dir=str(tmp_path / "c"), num_proc=3)
    assert str(parallel.value) == str(sequential.value)
    assert not list((tmp_path / "c").rglob("*.arrow"))  # nothing left behind


def test_skips_add_up_across_ranges(tmp_path):
    path = tmp_path / "skips.json"
    data = {str(i): {"captions": {"1": {"caption": "a b", "label": 1}, "2": {"caption": "c", "label": 0,
                                                                              "cpt_p_id": 99}}}
            for i in range(300)}
    path.write_text(json.dumps(data))
    seq = Counter()
    list(iter_hnc_pairs(str(path), skips=seq))
    ds = load_hnc_pairs(str(path), cache_dir=str(tmp_path / "c"), num_proc=4)
    assert len(ds) == 0
    with open(next((tmp_path / "c").rglob("hnc_skips.json"))) as f:
        assert Counter(json.load(f)["skips"]) == seq == Counter(negative_without_positive=300,
                                                               positive_without_negative=300)


def test_a_same_size_rewrite_with_its_mtime_restored_is_converted_again(tmp_path):
    """`cp -p`, `rsync -t` or `touch -d` restore mtime; a rewrite of the same size used to serve the stale cache.
    The fingerprint holds ctime (set by the kernel on any write or utime) and a hash of sampled content."""
    from hnc_clip.data.arrow_cache import content_sample_hash

    path = tmp_path / "f.json"
    path.write_text(json.dumps({"1": {"captions": {"1": {"caption": "a red cup", "label": 1},
                                                   "2": {"caption": "a tan cup", "label": 0, "cpt_p_id": 1}}}}))
    cache = str(tmp_path / "c")
    assert load_hnc_pairs(str(path), cache_dir=cache)["negative"] == ["a tan cup"]
    st = path.stat()
    before = path.read_text()
    path.write_text(before.replace("a tan cup", "a big cup"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert load_hnc_pairs(str(path), cache_dir=cache)["negative"] == ["a big cup"]
    # the sampled hash sees changes in a large file's head, middle blocks and tail, without reading all of it
    big = tmp_path / "big.bin"
    data = bytearray(os.urandom(8 << 20))
    big.write_bytes(data)
    hashes = {content_sample_hash(str(big))}
    for offset in (10, len(data) // 2 + 5, len(data) - 3):
        data[offset] ^= 1
        big.write_bytes(data)
        hashes.add(content_sample_hash(str(big)))
    assert len(hashes) == 4
