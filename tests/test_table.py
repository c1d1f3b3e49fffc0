"""Hard-negative tables (`hnc_clip.data.table`): every source reads into the same pairs, bad input is named or
counted, the Arrow cache is reused until the file or the flags change, K negatives per pair and hard-image pairs
reach the batch, and tables train (3 negatives per row; NegCLIP's TSV layout as it is)."""

from __future__ import annotations

import csv
import json
import logging
import math

import pytest
import torch

from hnc_clip.arguments import DataArguments
from hnc_clip.data import HncCollator
from hnc_clip.data.table import HardImagePairs, TableFormatError, load_table_pairs, with_hard_image_pairs

from .helpers import changed, run, weights

NEGCLIP_FLAGS = dict(image_column="filepath", caption_column="title", negative_caption_column="neg_caption",
                     negative_image_column="neg_image")


@pytest.fixture(scope="module")
def rows(sample_pairs) -> list[dict]:
    """40 table rows from the sample pairs: 3 negatives each (the pair's own, then two other negatives of the
    sample), and 2 hard-image rows each."""
    pairs = sample_pairs["train"][:40]
    negatives = [p["negative"] for p in sample_pairs["train"]]
    others = lambda i: [negatives[(i + 50) % len(negatives)], negatives[(i + 90) % len(negatives)]]  # noqa: E731
    return [
        {"image_path": p["image_file"], "caption": p["positive"], "negative_captions": [p["negative"], *others(i)],
         "hard_images": [(i + 7) % 40, (i + 13) % 40]}
        for i, p in enumerate(pairs)
    ]  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_delimited(path, rows, delimiter, names=None):
    """As pandas' to_csv writes NegCLIP's files: list cells as their Python repr."""
    names = names or {}
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow([names.get(k, k) for k in rows[0]])
        for r in rows:
            writer.writerow([repr(v) if isinstance(v, list) else v for v in r.values()])
    return path


def args(**kw) -> DataArguments:
    return DataArguments(**{"negative_image_column": "hard_images", **kw})


def records(ds) -> list[tuple]:
    return [(r["image_file"], r["positive"], tuple(r["negatives"]), tuple(r["negative_rows"]), r["source_row"])
            for r in ds]


def test_every_source_reads_the_same_pairs(tmp_path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cache = str(tmp_path / "cache")
    folder = tmp_path / "folder"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000.parquet")
    sources = {
        "jsonl": write_jsonl(tmp_path / "t.jsonl", rows),
        "csv": write_delimited(tmp_path / "t.csv", rows, ","),
        "tsv": write_delimited(tmp_path / "t.tsv", rows, "\t"),
        "parquet": tmp_path / "folder" / "train-00000.parquet",
        "dataset folder": folder,  # `load_dataset(path)`: the code path of a Hub dataset name
    }
    want = [(r["image_path"], r["caption"], tuple(r["negative_captions"]), tuple(r["hard_images"]), n)
            for n, r in enumerate(rows)]
    for name, path in sources.items():
        ds = load_table_pairs(str(path), args(), cache_dir=cache)
        assert records(ds) == want, name
    assert ds[0]["negative"] == rows[0]["negative_captions"][0] and ds[0]["image_id"] == rows[0]["image_path"]


def test_negclip_tsv_reads_as_it_is(tmp_path, rows):
    """NegCLIP's COCO files (vinid/neg_clip CsvDataset: tab-separated, `filepath`, `title`, `neg_caption` and
    `neg_image` as Python list literals) with the four column flags."""
    names = {"image_path": "filepath", "caption": "title", "negative_captions": "neg_caption",
             "hard_images": "neg_image"}
    path = write_delimited(tmp_path / "train_neg_clip.tsv", rows, "\t", names)
    ds = load_table_pairs(str(path), DataArguments(**NEGCLIP_FLAGS), cache_dir=str(tmp_path / "cache"))
    assert len(ds) == len(rows) and list(ds[3]["negatives"]) == rows[3]["negative_captions"]
    assert list(ds[3]["negative_rows"]) == rows[3]["hard_images"]


def test_bad_input_is_named_with_file_and_position(tmp_path, rows):
    cache = str(tmp_path / "cache")
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(TableFormatError, match=r"t\.jsonl: line 1: --caption_column 'text' not found; available "
                                               r"columns: \['caption', 'hard_images', 'image_path'"):
        load_table_pairs(str(path), args(caption_column="text"), cache_dir=cache)
    bad = [dict(r) for r in rows[:5]]
    bad[2]["caption"] = 17
    with pytest.raises(TableFormatError, match=r"line 3: column 'caption' holds int, not text"):
        load_table_pairs(str(write_jsonl(tmp_path / "b.jsonl", bad)), args(), cache_dir=cache)
    (tmp_path / "c.jsonl").write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(TableFormatError, match=r"c\.jsonl: line 2: not a JSON object"):
        load_table_pairs(str(tmp_path / "c.jsonl"), args(), cache_dir=cache)
    tsv = write_delimited(tmp_path / "d.tsv", rows[:4], "\t")
    tsv.write_text(tsv.read_text().replace("['", "[oops '", 1))
    with pytest.raises(TableFormatError, match=r"d\.tsv: line 2: column 'negative_captions' is not a list literal"):
        load_table_pairs(str(tsv), args(), cache_dir=cache)
    uneven = [dict(r) for r in rows[:5]]
    uneven[4]["negative_captions"] = uneven[4]["negative_captions"][:2]
    with pytest.raises(TableFormatError, match=r"line 5: 2 hard negatives, earlier rows 3: set --negatives_per_row"):
        load_table_pairs(str(write_jsonl(tmp_path / "e.jsonl", uneven)), args(), cache_dir=cache)
    single = [{**r, "hard_images": n} for n, r in enumerate(rows[:3])]  # a plain cell: one row number
    ds = load_table_pairs(str(write_delimited(tmp_path / "f.csv", single, ",")), args(), cache_dir=cache)
    assert [list(r["negative_rows"]) for r in ds] == [[0], [1], [2]]
    single[1]["hard_images"] = "near"
    with pytest.raises(TableFormatError, match=r"g\.csv: line 3: column 'hard_images' holds 'near'; expected row"):
        load_table_pairs(str(write_delimited(tmp_path / "g.csv", single, ",")), args(), cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="table file not found"):
        load_table_pairs(str(tmp_path / "missing.csv"), args(), cache_dir=cache)


def test_rows_that_make_no_pair_are_skipped_and_counted(tmp_path, rows, caplog):
    some = [dict(r) for r in rows[:10]]
    some[1]["caption"] = "  "
    some[2]["negative_captions"] = []
    some[3]["negative_captions"] = ["", "only one"]
    some[4]["image_path"] = ""
    path = write_jsonl(tmp_path / "t.jsonl", some)
    with caplog.at_level(logging.WARNING, logger="hnc_clip"):
        ds = load_table_pairs(str(path), args(negatives_per_row=2), cache_dir=str(tmp_path / "cache"))
    assert [r["source_row"] for r in ds] == [0, 5, 6, 7, 8, 9]  # positions kept: hard-image rows still match
    assert ("kept 6 pairs, skipped 4 (empty_caption=1, empty_image=1, fewer_negatives_than_negatives_per_row=1, "
            "no_negative=1)") in caplog.text


def test_arrow_cache_is_reused_until_the_file_or_the_flags_change(tmp_path, rows, monkeypatch):
    import os

    from hnc_clip.data import table

    cache = str(tmp_path / "cache")
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    load_table_pairs(str(path), args(), cache_dir=cache)
    calls = []
    real = table._convert
    monkeypatch.setattr(table, "_convert", lambda *a: calls.append(1) or real(*a))
    assert len(load_table_pairs(str(path), args(), cache_dir=cache)) == len(rows) and not calls
    load_table_pairs(str(path), args(negatives_per_row=1), cache_dir=cache)  # other flags: converted again
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed
    load_table_pairs(str(path), args(), cache_dir=cache)
    assert len(calls) == 2


def test_k_negatives_and_hard_image_pairs_reach_the_batch(tmp_path, rows, tiny_clip_dir):
    """Three negatives per row become three blocks of caption rows; each row brings one of its listed hard-image
    rows that is in the split (never a row cut from it) as a further pair, as NegCLIP's [I; I']."""
    from transformers import CLIPProcessor

    ds = load_table_pairs(str(write_jsonl(tmp_path / "t.jsonl", rows)), args(), cache_dir=str(tmp_path / "cache"))
    blank = torch.zeros(3, 32, 32)
    ds = ds.select(range(20)).with_transform(lambda b: {**b, "pixel_values": [blank] * len(b["positive"])})
    pairs = with_hard_image_pairs(ds)
    assert isinstance(pairs, HardImagePairs) and len(pairs) == 20
    for i in range(20):
        item = pairs[i]
        allowed = [r for r in rows[i]["hard_images"] if r < 20]
        assert (item.get("hard_image_pair") is not None) == bool(allowed)
        if allowed:
            assert item["hard_image_pair"]["source_row"] in allowed
    tokenizer = CLIPProcessor.from_pretrained(tiny_clip_dir).tokenizer
    batch = HncCollator(tokenizer)([pairs[i] for i in range(4)])
    b = batch["image_index"].shape[0]
    assert b == 4 + sum(pairs[i].get("hard_image_pair") is not None for i in range(4))
    assert batch["text_index"].shape[0] == 4 * b  # [positives; 3 blocks of negatives]
    texts = tokenizer.batch_decode(batch["input_ids"][batch["text_index"]], skip_special_tokens=True)
    assert texts[b + 1].lower() == pairs[1]["negatives"][0].lower().rstrip(".").replace(",", "")
    assert texts[2 * b + 1].lower() == pairs[1]["negatives"][1].lower().rstrip(".").replace(",", "")
    one = HncCollator(tokenizer, negatives_per_row=1)([pairs[i] for i in range(4)])
    assert one["text_index"].shape[0] == 2 * b
    assert with_hard_image_pairs(ds.remove_columns("negative_rows")) is not None
    assert not isinstance(with_hard_image_pairs(ds.remove_columns("negative_rows")), HardImagePairs)


def test_a_table_with_three_negatives_per_row_trains(tmp_path, rows, tiny_clip_dir, tiny_siglip_dir,
                                                    sample_image_dir):
    path = write_jsonl(tmp_path / "t.jsonl", [{k: v for k, v in r.items() if k != "hard_images"} for r in rows])
    for name, model in (("clip", tiny_clip_dir), ("siglip", tiny_siglip_dir)):
        results, out = run(tmp_path / name, model, sample_image_dir, "--train_file", str(path), "--loss_type", "hnc",
                           "--max_steps", "2")
        assert math.isfinite(results["train_loss"]) and results["train_samples"] == len(rows)
        assert changed(weights(model), weights(out))


def test_negclip_trains_on_negclip_layout_with_hard_images(tmp_path, rows, tiny_clip_dir, sample_image_dir):
    names = {"image_path": "filepath", "caption": "title", "negative_captions": "neg_caption",
             "hard_images": "neg_image"}
    path = write_delimited(tmp_path / "train_neg_clip.tsv", rows, "\t", names)
    flags = [f"--{k}={v}" for k, v in NEGCLIP_FLAGS.items()]
    results, out = run(tmp_path, tiny_clip_dir, sample_image_dir, "--train_file", str(path), *flags,
                       "--loss_type", "negclip", "--negatives_per_row", "1", "--mask_same_image", "false")
    assert math.isfinite(results["train_loss"]) and changed(weights(tiny_clip_dir), weights(out))


def test_a_killed_conversion_leaves_nothing_behind_and_a_rerun_removes_its_folder(tmp_path, rows):
    """Tables share the HNC cache's publishing (`build_cache_dir`): a conversion that fails mid-way leaves no
    folder; one killed outright (its process gone) leaves one, which the next conversion removes."""
    import socket

    from hnc_clip.data import table

    path = str(write_jsonl(tmp_path / "t.jsonl", rows))
    cache = tmp_path / "cache"
    root = cache / "hnc_tables"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(table, "_convert", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
        with pytest.raises(OSError, match="disk gone"):
            load_table_pairs(path, args(), cache_dir=str(cache))
    assert list(root.iterdir()) == []
    dead = 2**22 + 12345  # above the largest pid_max Linux allows (2**22): no such process
    stale = root / f"abc.incomplete-{dead}@{socket.gethostname()}@x"
    stale.mkdir()
    assert len(load_table_pairs(path, args(), cache_dir=str(cache))) == len(rows)
    assert not stale.exists()
    assert not [p for p in root.iterdir() if ".incomplete-" in p.name]


def test_every_row_is_checked_and_named_by_line(tmp_path, rows):
    """An unquoted comma used to shift a CSV row's cells ("the cup, which is red" read as positive "the cup" and
    negative "which is red"), and a JSONL row after the first without a column was a bare KeyError: every row's
    cell count and columns are checked now, the error naming the file and the line."""
    path = tmp_path / "t.csv"
    path.write_text("image_path,caption,negative_captions\na.jpg,a red cup,a blue cup\n"
                    "b.jpg,the cup, which is red,the cup which is blue\n")  # fmt: skip
    with pytest.raises(TableFormatError, match=r"t.csv: line 3: 4 cells, the header has 3 .*comma must be quoted"):
        load_table_pairs(str(path), args(negative_image_column=None), cache_dir=str(tmp_path / "c"))
    broken = [rows[0], {k: v for k, v in rows[1].items() if k != "caption"}]
    with pytest.raises(TableFormatError, match=r"t.jsonl: line 2: --caption_column 'caption' not found"):
        load_table_pairs(str(write_jsonl(tmp_path / "t.jsonl", broken)), args(), cache_dir=str(tmp_path / "c"))
    path = tmp_path / "deep.csv"
    path.write_text("image_path,caption,negative_captions\n" + "a.jpg,a cup," + "[" * 5000 + "\n")
    with pytest.raises(TableFormatError, match=r"deep.csv: line 2: column 'negative_captions' is not a list"):
        load_table_pairs(str(path), args(negative_image_column=None), cache_dir=str(tmp_path / "c"))


def test_a_same_size_rewrite_with_its_mtime_restored_is_read_again(tmp_path, rows):
    """The table cache was keyed by size and mtime: a rewrite that keeps both (`cp -p`, `rsync -t`) was served
    stale. It takes the HNC cache's key now (ctime and sampled content)."""
    import os

    path = write_jsonl(tmp_path / "t.jsonl", rows[:2])
    cache = str(tmp_path / "cache")
    assert load_table_pairs(str(path), args(), cache_dir=cache)["positive"][0] == rows[0]["caption"]
    st = path.stat()
    edited = dict(rows[0], caption=rows[0]["caption"][::-1])  # same length, other text
    write_jsonl(path, [edited, rows[1]])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert load_table_pairs(str(path), args(), cache_dir=cache)["positive"][0] == edited["caption"].strip()
