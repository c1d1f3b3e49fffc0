"""Image–caption sources streamed (`hnc_clip.data.sources`, `hnc_clip.data.stream`): WebDataset shards, an image
folder, a Hub-layout dataset, weighted mixes with HNC; per-process shards; a resumed run continues with exactly the
samples it had not seen; every unreadable sample counted by its reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import types
from collections import Counter

import pytest

from hnc_clip.data import SourceError, StreamLoader, StreamStateError, TrainingStream, parse_source
from hnc_clip.scripts import train as train_app

from .helpers import REPO, TRAIN_SAMPLE, accelerate_launch
from .stream_fixtures import add_member, jpeg, write_hub_like, write_imagefolder, write_shards

ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


@pytest.fixture(scope="module")
def captions(sample_pairs):
    return sorted({p["positive"] for p in sample_pairs["train"]})[:40]


def flags(tmp_path, tiny_clip_dir, *extra, out="out"):
    return [
        "--model_name_or_path", str(tiny_clip_dir), "--output_dir", str(tmp_path / out),
        "--cache_dir", str(tmp_path / "cache"), "--do_train", "--use_cpu", "--report_to", "none",
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--logging_steps", "1", "--seed", "3",
        "--dataloader_num_workers", "0", "--save_strategy", "no", *extra,
    ]  # fmt: skip


def args(**kw):
    base = {"caption_column": "caption", "negative_caption_column": "negative_captions", "image_column": None,
            "train_split": "train", "dataset_config_name": None, "image_dir": None}  # fmt: skip
    return types.SimpleNamespace(**{**base, **kw})


def ids_of(records):
    return [r["pair_id"].rsplit("|", 1)[-1] for r in records]


# ---------------------------------------------------------------------------------------------------------------
# the loader alone


def test_resumed_loader_continues_exactly_across_workers_and_passes(tmp_path, captions):
    """Two DataLoader workers, 4 shards of 5: the state after 5 batches, saved as JSON and loaded into a new loader,
    gives the uninterrupted sequence from there on, through the end of the pass and into the next (a new order)."""
    pattern = write_shards(tmp_path / "shards", captions, shards=4, per_shard=5)
    stream = TrainingStream([parse_source(f"webdataset:{pattern}")], args(), seed=0)

    def loader():
        return StreamLoader(stream, batch_size=3, collate_fn=ids_of, num_workers=2)

    it = iter(loader())
    full = [next(it) for _ in range(14)]
    first = loader()
    it = iter(first)
    head = [next(it) for _ in range(5)]
    state = json.loads(json.dumps(first.state_dict()))
    resumed = loader()
    resumed.load_state_dict(state)
    it = iter(resumed)
    assert head + [next(it) for _ in range(9)] == full
    one_pass = [k for batch in full[:8] for k in batch]  # 2 workers x (3 + 3 + 3 + 1): one pass
    assert sorted(one_pass) == sorted(f"{s:05d}{j:04d}" for s in range(4) for j in range(5))
    assert full[8:] != full[:6]  # the next pass reads the shards in another order


def test_a_state_from_other_processes_is_refused(tmp_path, captions):
    pattern = write_shards(tmp_path / "shards", captions, shards=2, per_shard=3)
    stream = TrainingStream([parse_source(f"webdataset:{pattern}")], args(), seed=0)
    state = StreamLoader(stream, batch_size=2, collate_fn=ids_of).state_dict()
    other = StreamLoader(stream, batch_size=2, collate_fn=ids_of, rank=1, world_size=2)
    with pytest.raises(StreamStateError, match="world_size = 1.*has 2"):
        other.load_state_dict(state, where="ckpt/process_1.json")


@pytest.mark.parametrize("shards", [4, 3])
def test_each_process_reads_its_own_part_and_together_all(tmp_path, captions, shards):
    """4 shards over 2 processes: 2 shards each (datasets' split_dataset_by_node by shards); 3 shards: every
    process reads all and keeps every other sample. Either way the parts are disjoint and cover every sample."""
    pattern = write_shards(tmp_path / "shards", captions, shards=shards, per_shard=4)
    stream = TrainingStream([parse_source(f"webdataset:{pattern}")], args(), seed=0)
    parts = []
    for rank in range(2):
        it = iter(StreamLoader(stream, batch_size=1, collate_fn=ids_of, rank=rank, world_size=2))
        parts.append([next(it)[0] for _ in range(shards * 2)])
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(f"{s:05d}{j:04d}" for s in range(shards) for j in range(4))


def test_hostile_shards_are_counted_by_reason_not_fatal(tmp_path, captions, monkeypatch):
    """A truncated tar, a file that is not a tar, a sample without image, one without caption, a bad .json and a
    member declaring more than the bound: each gives a record with its reason; the good samples all arrive."""
    folder = tmp_path / "bad"
    good = write_shards(folder, captions, shards=1, per_shard=3)  # 00000.tar
    with tarfile.open(folder / "00001.tar", "w") as tar:
        add_member(tar, "a.jpg", jpeg(1))  # no caption
        add_member(tar, "b.txt", b"a caption without image")
        add_member(tar, "c.jpg", jpeg(2))
        add_member(tar, "c.json", b"{not json")
        add_member(tar, "d.jpg", jpeg(3))
        add_member(tar, "d.txt", b"the last good one")
    whole = (folder / "00000.tar").read_bytes()
    (folder / "00002.tar").write_bytes(whole[: len(whole) // 2 + 100])  # cut inside a member
    (folder / "00003.tar").write_bytes(b"this is not a tar file at all" * 40)
    from hnc_clip.data import sources

    records = list(sources.read_shards([str(folder / f"{i:05d}.tar") for i in range(4)], ("wds", "wds"),
                                       "caption", None))  # fmt: skip
    reasons = Counter(r["skip"] for r in records)
    assert reasons["no_caption"] == 1 and reasons["no_image"] == 1 and reasons["bad_json"] == 1
    assert reasons["unreadable_shard"] == 2  # the truncated one (after what it held) and the non-tar
    assert [r["positive"] for r in records if not r["skip"]][:3] == captions[:3]
    assert "the last good one" in [r["positive"] for r in records]
    assert good.endswith("{00000..00000}.tar")
    big = folder / "big.tar"
    with tarfile.open(big, "w") as tar:
        add_member(tar, "x.jpg", jpeg(4))
        add_member(tar, "x.txt", b"a caption")
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", 100)  # the JPEG is larger: read as if it declared terabytes
    (rec,) = list(sources.read_shards([str(big)], ("wds", "wds"), "caption", None))
    assert rec["skip"] == "member_too_large"


# ---------------------------------------------------------------------------------------------------------------
# training on each source kind


def test_webdataset_training_counts_every_skip_and_source(tmp_path, tiny_clip_dir, captions):
    pattern = write_shards(tmp_path / "shards", captions, shards=2, per_shard=8)
    with tarfile.open(tmp_path / "shards" / "00002.tar", "w") as tar:  # an undecodable image and a caption-less one
        add_member(tar, "z.jpg", b"\xff\xd8 not really a jpeg")
        add_member(tar, "z.txt", captions[0].encode())
        add_member(tar, "y.jpg", jpeg(9))
    pattern = pattern.replace("00001}", "00002}")
    results = train_app.main(*train_app.parse_args(flags(tmp_path, tiny_clip_dir, "--train_shards", pattern,
                                                         "--max_steps", "3", "--loss_type", "clip")))  # fmt: skip
    assert results["train_skipped/unreadable_image"] == 1 and results["train_skipped/no_caption"] == 1
    # 3 steps of 8 read one pass (8 + 8 + the last shard's 2): every record counted, the skipped ones included
    assert results["train_source/webdataset"] == 18
    assert results["train_pairs"] == 16 and results["train_skipped_images"] == 2
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_imagefolder_source_trains(tmp_path, tiny_clip_dir, captions):
    folder = write_imagefolder(tmp_path / "photos", captions, 12)
    results = train_app.main(*train_app.parse_args(flags(tmp_path, tiny_clip_dir, "--dataset_name", "imagefolder",
                                                         "--data_dir", str(folder), "--max_steps", "2",
                                                         "--loss_type", "clip")))  # fmt: skip
    assert results["train_pairs"] == 12 and results["train_source/imagefolder"] == 12  # one pass: 8 + 4


def test_hub_layout_source_with_several_captions_per_image(tmp_path, tiny_clip_dir, captions):
    """COCO-style: five captions per image → five pairs of one image (one image id: same-image masking)."""
    folder = write_hub_like(tmp_path / "coco_like", captions, n=6, per_image=5)
    results = train_app.main(*train_app.parse_args(flags(tmp_path, tiny_clip_dir, "--dataset_name", str(folder),
                                                         "--caption_column", "captions", "--max_steps", "2",
                                                         "--loss_type", "clip")))  # fmt: skip
    assert results["train_pairs"] == 16
    from hnc_clip.data import sources

    spec = parse_source(f"hub:{folder}")
    records = list(sources.datasets_source(spec, args(caption_column="captions"), 0, 0))
    assert len(records) == 30 and len({r["image_id"] for r in records}) == 6
    assert len({r["pair_id"] for r in records}) == 30


def test_a_weighted_mix_of_hnc_and_shards_logs_each_share_and_writes_it_in_the_card(
    tmp_path, tiny_clip_dir, sample_image_dir, captions
):
    pattern = write_shards(tmp_path / "shards", captions, shards=4, per_shard=16)
    results = train_app.main(*train_app.parse_args(flags(
        tmp_path, tiny_clip_dir, "--train_file", str(TRAIN_SAMPLE), "--image_dir", str(sample_image_dir),
        "--train_shards", pattern, "--source_weights", "3", "1", "--max_steps", "12", "--loss_type", "hnc",
    )))  # fmt: skip
    hnc, wds = results["train_source/hnc"], results["train_source/webdataset"]
    assert hnc + wds == 12 * 8
    assert 0.6 < hnc / (hnc + wds) < 0.9  # weights 3 : 1
    assert results["train_pairs_without_negative"] == wds  # plain captions, no rules: contrastive only
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| hnc | `hnc:" in card and "| webdataset | `webdataset:" in card
    assert f"({hnc:,})" in card and f"({wds:,})" in card


# ---------------------------------------------------------------------------------------------------------------
# refused before any work


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_steps", "-1", "--num_train_epochs", "1"], "give --max_steps"),
        (["--max_steps", "2", "--group_by_image", "4"], "--group_by_image"),
        (["--max_steps", "2", "--max_train_samples", "10"], "--max_train_samples does not apply"),
        (["--max_steps", "2", "--source_weights", "1", "2"], "2 weights for 1 training sources"),
    ],
)
def test_stream_settings_that_cannot_work_are_refused(tmp_path, tiny_clip_dir, captions, extra, message):
    pattern = write_shards(tmp_path / "shards", captions, shards=1, per_shard=2)
    with pytest.raises((ValueError, SourceError), match=message):
        train_app.main(*train_app.parse_args(flags(tmp_path, tiny_clip_dir, "--train_shards", pattern, *extra)))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_missing_shards_and_columns_are_named(tmp_path, tiny_clip_dir, captions):
    pattern = write_shards(tmp_path / "shards", captions, shards=2, per_shard=2).replace("00001}", "00003}")
    with pytest.raises(SourceError, match="2 of 4 shards not found"):
        train_app.main(*train_app.parse_args(flags(tmp_path, tiny_clip_dir, "--train_shards", pattern,
                                                   "--max_steps", "2")))  # fmt: skip
    folder = write_imagefolder(tmp_path / "photos", captions, 3)
    with pytest.raises(SourceError, match="--caption_column 'text' not found; columns: \\['caption', 'image'\\]"):
        train_app.main(*train_app.parse_args(flags(tmp_path, tiny_clip_dir, "--dataset_name", "imagefolder",
                                                   "--data_dir", str(folder), "--caption_column", "text",
                                                   "--max_steps", "2")))  # fmt: skip
    with pytest.raises(SourceError, match="KIND:LOCATION"):
        train_app.parse_args(flags(tmp_path, tiny_clip_dir, "--train_sources", "shards/*.tar", "--max_steps", "2"))


# ---------------------------------------------------------------------------------------------------------------
# resumed after SIGKILL: exactly the samples not yet seen


def recorded(folder, rank=0) -> dict[int, list]:
    steps = {}
    for line in open(os.path.join(folder, f"process_{rank}.jsonl")):
        row = json.loads(line)
        steps[row["step"]] = row["pair_ids"]  # a step trained again after the resume: the later one
    return steps


def reference_order(tmp_path, pattern, tiny_clip_dir, steps, rank=0, world=2) -> list[list]:
    """The uninterrupted stream of one process, read by the loader alone (no training, no checkpoint)."""
    from hnc_clip.arguments import DataArguments

    data_args = DataArguments(train_shards=pattern)
    stream = TrainingStream([parse_source(f"webdataset:{pattern}")], data_args, seed=3)
    loader = StreamLoader(stream, batch_size=8, collate_fn=lambda recs: [r["pair_id"] for r in recs],
                          num_workers=2, rank=rank, world_size=world)  # fmt: skip
    it = iter(loader)
    return [next(it) for _ in range(steps)]


def run_killed_then_resumed(tmp_path, tiny_clip_dir, pattern, launch):
    common = flags(tmp_path, tiny_clip_dir, "--train_shards", pattern, "--max_steps", "8", "--loss_type", "clip",
                   "--save_strategy", "steps", "--save_steps", "3", "--dataloader_num_workers", "2")  # fmt: skip
    launch(str(tmp_path / "killed"), "SIGKILL", "5", "--", *common)
    assert (tmp_path / "out" / "checkpoint-3").is_dir() and not (tmp_path / "out" / "model.safetensors").exists()
    launch(str(tmp_path / "resumed"), "--", *common, "--resume_from_checkpoint", "last")
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_a_stream_resumed_after_sigkill_sees_exactly_the_samples_it_had_not_seen(tmp_path, tiny_clip_dir, captions):
    """One process, two DataLoader workers, 3 shards of 10 (a pass ends after ~4 steps): killed at step 5 with the
    checkpoint of step 3, resumed: steps 4..8 are the uninterrupted stream's, with no sample repeated or lost."""
    pattern = write_shards(tmp_path / "shards", captions, shards=3, per_shard=10)

    def launch(record_dir, *rest):
        proc = subprocess.run([sys.executable, "tests/record_run.py", record_dir, *rest], cwd=REPO, env=ENV,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        if "SIGKILL" in rest:
            assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        else:
            assert proc.returncode == 0, proc.stderr[-3000:]

    run_killed_then_resumed(tmp_path, tiny_clip_dir, pattern, launch)
    expected = reference_order(tmp_path, pattern, tiny_clip_dir, 8, world=1)
    before, after = recorded(tmp_path / "killed"), recorded(tmp_path / "resumed")
    assert [before[s] for s in (1, 2, 3)] == expected[:3]
    assert sorted(after) == [4, 5, 6, 7, 8]
    assert [after[s] for s in range(4, 9)] == expected[3:]


def test_a_stream_resumed_after_sigkill_under_two_processes(tmp_path, tiny_clip_dir, captions):
    """The same with two gloo processes: each process resumes its own shards' position."""
    pattern = write_shards(tmp_path / "shards", captions, shards=4, per_shard=10)

    def launch(record_dir, *rest):
        if "SIGKILL" in rest:
            with pytest.raises(AssertionError):  # the launcher reports the killed process as a failure
                accelerate_launch(str(REPO / "tests" / "record_run.py"), record_dir, *rest)
        else:
            accelerate_launch(str(REPO / "tests" / "record_run.py"), record_dir, *rest)

    run_killed_then_resumed(tmp_path, tiny_clip_dir, pattern, launch)
    for rank in range(2):
        expected = reference_order(tmp_path, pattern, tiny_clip_dir, 8, rank=rank)
        before, after = recorded(tmp_path / "killed", rank), recorded(tmp_path / "resumed", rank)
        assert [before[s] for s in (1, 2, 3)] == expected[:3]
        assert [after[s] for s in range(4, 9)] == expected[3:]


# ---------------------------------------------------------------------------------------------------------------
# negatives made on the fly from plain captions

WORLD = ["The yellow banana is to the left of the white straw.", "The black bag is to the left of the small plate.",
         "The white plate is to the left of the yellow banana.", "The bag is black.", "The man is small."]
LEXICON = {"the": "DET", "yellow": "ADJ", "white": "ADJ", "black": "ADJ", "small": "ADJ", "banana": "NOUN",
           "straw": "NOUN", "bag": "NOUN", "plate": "NOUN", "man": "NOUN", "is": "AUX", "to": "ADP", "left": "NOUN",
           "of": "ADP", ".": "PUNCT"}  # fmt: skip


def test_negatives_from_captions_train_and_every_caption_is_counted(tmp_path, tiny_clip_dir):
    """Plain captions with `--negatives_from_captions swap`: each caption read is counted once, under the rule that
    made its negative or the reason it got none; those without one train the contrastive term only."""
    pattern = write_shards(tmp_path / "shards", WORLD, shards=2, per_shard=10)
    (tmp_path / "words.json").write_text(json.dumps(LEXICON))
    results = train_app.main(*train_app.parse_args(flags(
        tmp_path, tiny_clip_dir, "--train_shards", pattern, "--max_steps", "2", "--loss_type", "pairwise",
        "--negatives_from_captions", "swap", "--caption_parser", f"lexicon:{tmp_path / 'words.json'}",
    )))  # fmt: skip
    made = {k: v for k, v in results.items() if k.startswith("train_negatives/")}
    assert sum(made.values()) == results["train_pairs"] == 16
    assert made["train_negatives/no_rule_applied"] == results["train_pairs_without_negative"] > 0  # "The man is small"
    assert made["train_negatives/swap-obj"] + made["train_negatives/swap-att"] + made["train_negatives/swap-rel"] > 0


def test_generated_negatives_are_the_same_in_another_process(tmp_path, tiny_clip_dir):
    """A fresh collator (another worker, process or a resumed run) makes the same negatives for the same records:
    they are seeded by (--seed, pair id), not by a worker's random state."""
    import random

    from hnc_clip.arguments import DataArguments, ModelArguments
    from hnc_clip.data import make_collator
    from hnc_clip.modeling import load_processor

    pattern = write_shards(tmp_path / "shards", WORLD, shards=1, per_shard=10)
    (tmp_path / "words.json").write_text(json.dumps(LEXICON))
    data_args = DataArguments(train_shards=pattern, negatives_from_captions="swap,replace",
                              caption_parser=f"lexicon:{tmp_path / 'words.json'}")  # fmt: skip
    processor = load_processor(ModelArguments(model_name_or_path=str(tiny_clip_dir)))
    from transformers import CLIPConfig

    config = CLIPConfig.from_pretrained(str(tiny_clip_dir))
    stream = TrainingStream([parse_source(f"webdataset:{pattern}")], data_args, seed=5)
    records = list(stream.build(0))
    first = make_collator(data_args, processor, config, stream=stream, seed=5)(records)
    random.seed(123)  # another process's state of Python's RNG
    again = make_collator(data_args, processor, config, stream=stream, seed=5)(records)
    ids = first["input_ids"][first["text_index"]]
    assert ids.tolist() == again["input_ids"][again["text_index"]].tolist()
    assert first["negative_mask"].tolist() == again["negative_mask"].tolist()
    third = make_collator(data_args, processor, config, stream=stream, seed=6)(records)
    assert third["input_ids"][third["text_index"]].tolist() != ids.tolist()


def test_a_plain_caption_table_gets_its_negatives_made(tmp_path, tiny_clip_dir):
    """A table with no negative column (the map-style path: --group_by_image, same batches as an HNC run of the same
    rows): with --negatives_from_captions its rows are kept and their negatives made in the collator."""
    images = tmp_path / "images"
    images.mkdir()
    with open(tmp_path / "plain.jsonl", "w") as f:
        for i in range(16):
            (images / f"{i}.jpg").write_bytes(jpeg(i))
            f.write(json.dumps({"image_path": f"{i}.jpg", "caption": WORLD[i % len(WORLD)]}) + "\n")
    (tmp_path / "words.json").write_text(json.dumps(LEXICON))
    common = ["--train_file", str(tmp_path / "plain.jsonl"), "--image_dir", str(images), "--max_steps", "2",
              "--loss_type", "pairwise"]  # fmt: skip
    with pytest.raises(Exception, match="--negative_caption_column .negative_captions. not found"):  # without the flag
        train_app.main(*train_app.parse_args(flags(tmp_path, tiny_clip_dir, *common)))
    results = train_app.main(*train_app.parse_args(flags(
        tmp_path, tiny_clip_dir, *common, "--group_by_image", "1", "--negatives_from_captions", "swap",
        "--caption_parser", f"lexicon:{tmp_path / 'words.json'}", "--overwrite_output_dir",
    )))  # fmt: skip
    made = {k: v for k, v in results.items() if k.startswith("train_negatives/")}
    assert sum(made.values()) == results["train_pairs"] == 16
    assert results["train_pairs_without_negative"] == made["train_negatives/no_rule_applied"]


def test_a_shard_sample_holds_only_the_fields_it_uses_within_the_bound(tmp_path, monkeypatch):
    """A 4.5 MB gzipped shard of many zero-filled fields per sample used to take 1 GB: every field of a sample was
    read and held. Now only its first image, json and txt/text are read, and together they must stay within
    MAX_MEMBER_BYTES (else `member_too_large`)."""
    from hnc_clip.data import sources

    shard = tmp_path / "00000.tar.gz"
    with tarfile.open(shard, "w:gz") as tar:
        add_member(tar, "x.jpg", jpeg(1))
        add_member(tar, "x.txt", b"a caption")
        for i in range(40):
            add_member(tar, f"x.extra{i}.bin", bytes(2**20))  # 40 MiB of zeros, a few KB gzipped
        add_member(tar, "x.seg.png", jpeg(2))  # a second image field: not used, not read
        add_member(tar, "y.jpg", jpeg(3))
        add_member(tar, "y.json", json.dumps({"caption": "y" * 500}).encode())
    read = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: read.append(m.name) or real(self, m))
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", len(jpeg(3)) + 200)  # y's image fits alone, not with its json
    x, y = sources.read_shards([str(shard)], ("wds", "wds"), "caption", None)
    assert read == ["x.jpg", "x.txt", "y.jpg"]
    assert x["positive"] == "a caption" and not x["skip"] and y["skip"] == "member_too_large"
