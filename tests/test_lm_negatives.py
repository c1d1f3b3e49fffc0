"""LM-written negatives (`hnc-clip-negatives`, `hnc_clip.negatives.lm`): a random GPT-2 built in code and loaded
from its folder writes a table the training reader takes as it is (and trains on); each filter drops what it
should, counted; a killed run resumes to the uninterrupted run's table; two processes make the one-process table;
the plausibility filter agrees with an independent log-likelihood; bad input is named or counted."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from hnc_clip.arguments import DataArguments
from hnc_clip.data.table import TableFormatError, load_table_pairs
from hnc_clip.errors import OutputDirInUseError
from hnc_clip.negatives import lm
from hnc_clip.negatives.lm import (
    PROMPTS,
    FilterOptions,
    Generation,
    GenerationSettings,
    LMGenerator,
    LogLikelihoodScorer,
    build_filters,
    write_negatives,
)
from hnc_clip.negatives.parts import PartsError, read_part
from hnc_clip.output_dir import OutputDirLock
from hnc_clip.scripts import negatives as app

from .helpers import REPO, accelerate_launch, changed, run, weights

CAPTIONS = ["a red cup on a wooden table", "a dog chasing a cat in the park", "two men riding horses on a beach",
            "a small boat near a white house", "a woman holding a blue umbrella"]  # fmt: skip
TYPES = ["replace-obj", "swap-att", "add-obj"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> str:
    from hnc_clip.tiny import save_tiny_causal_lm

    texts = [p.format(c) for p in PROMPTS.values() for c in CAPTIONS]
    return save_tiny_causal_lm(str(tmp_path_factory.mktemp("tiny_lm")), texts)


@pytest.fixture(scope="module")
def captions_file(tmp_path_factory, sample_pairs):
    """11 rows of the sample pairs' images and captions, an `id` column to pass through, row 6 empty."""
    rows = [{"image_path": p["image_file"], "caption": p["positive"], "id": f"r{i}"}
            for i, p in enumerate(sample_pairs["train"][:11])]  # fmt: skip
    rows[6]["caption"] = "  "
    path = tmp_path_factory.mktemp("captions") / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def flags(lm_dir, captions_file, out, *extra) -> list[str]:
    return ["--model_name_or_path", str(lm_dir), "--input_file", str(captions_file), "--output_file", str(out),
            "--negative_types", *TYPES, "--batch_size", "4", "--max_new_tokens", "6", "--do_sample", "true",
            "--seed", "3", "--allow_truncated", "true", "--max_rows_without_negative", "1.0", *extra]  # fmt: skip


def parse(argv) -> app.NegativesArguments:
    (args,) = app.make_parser().parse_args_into_dataclasses(args=argv)
    return args


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def counts(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("this_run", "output_file")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, lm_dir, captions_file):
    out = tmp_path_factory.mktemp("one") / "negatives.jsonl"
    summary = app.main(parse(flags(lm_dir, captions_file, out, "--keep_parts", "true")))
    return out, summary


def test_table_reads_as_it_is_and_trains(tmp_path, uninterrupted, captions_file, tiny_clip_dir, sample_image_dir):
    out, summary = uninterrupted
    rows, source = read_jsonl(out), read_jsonl(captions_file)
    assert [{k: r[k] for k in ("image_path", "caption", "id")} for r in rows] == source  # every row, input order
    assert all(len(r["negative_captions"]) == len(r["negative_types"]) for r in rows)
    assert rows[6]["negative_captions"] == [] and summary["rows_skipped"] == {"empty_caption": 1}
    kept = sum(len(r["negative_captions"]) for r in rows)
    assert kept == summary["negatives"] > 0 and summary["rows_prompted"] == 10
    assert summary["blind_text_accuracy"] is None and summary["negatives_scored"] == 0  # no `plausibility`
    assert summary["candidates"] == 10 * len(TYPES) == kept + sum(summary["dropped"].values())
    assert summary["negatives_per_type"] == {t: sum(r["negative_types"].count(t) for r in rows) for t in TYPES}
    assert json.loads(open(str(out).replace(".jsonl", ".summary.json")).read()) == summary
    for r in rows:  # the filters held: no echo of the caption, no repeat within a row
        norm = [lm.normalize(t) for t in r["negative_captions"]]
        assert lm.normalize(r["caption"]) not in norm and len(set(norm)) == len(norm)

    # the training reader: a row without negative is skipped (counted), every other one is a pair
    data = DataArguments(train_file=str(out), negative_caption_column="negative_captions", negatives_per_row=1,
                         image_dir=str(tmp_path))
    ds = load_table_pairs(str(out), data, cache_dir=str(tmp_path / "cache"))
    with_negative = [r for r in rows if r["negative_captions"]]
    assert [p["positive"] for p in ds] == [r["caption"] for r in with_negative]
    assert [list(p["negatives"]) for p in ds] == [r["negative_captions"] for r in with_negative]
    results, model_out = run(tmp_path, tiny_clip_dir, sample_image_dir, "--train_file", str(out),
                             "--negative_caption_column", "negative_captions", "--negatives_per_row", "1",
                             "--loss_type", "pairwise", "--max_steps", "2", "--per_device_train_batch_size", "4")
    assert math.isfinite(results["train_loss"]) and results["train_samples"] == len(with_negative)
    assert changed(weights(tiny_clip_dir), weights(model_out))


# -- filters --------------------------------------------------------------------------------------------------------


def caption_of(prompt: str) -> str:
    return prompt.rsplit("Caption: ", 1)[1].removesuffix("\nNegative:")


def fake_lm(writes):
    """A generate function: per prompt, `writes(caption, type)` → the continuations it returns."""

    def generate(prompts, seed):
        kind = next(k for k, p in PROMPTS.items() if all(p.instruction in q for q in prompts))
        return [[Generation(*w) if isinstance(w, tuple) else Generation(w) for w in writes(caption_of(q), kind)]
                for q in prompts]  # fmt: skip

    return generate


def test_each_filter_drops_what_it_should_and_counts_it():
    long = " ".join(["word"] * 41)
    by_type = {
        "replace-obj": lambda c: [f" {c.upper()}!\n"],  # the caption again, up to case and punctuation
        "replace-att": lambda c: ["", "\n a line after a line end", " \"\" \nmore"],  # nothing; line end first; ""
        "replace-rel": lambda c: [f" {c} and a dog\n"],  # the one kept
        "swap-att": lambda c: [f" {c}, and a dog.\n"],  # the same as replace-rel's, normalised
        "swap-obj": lambda c: [f" {long}\n", f" {c} " + "x " * (len(c.split()) + 1) + "\n"],  # > 40 words; > 2x
        "add-att": lambda c: [(" a cut off", False)],  # ran into max_new_tokens
        "add-obj": lambda c: [" 'a quoted caption'\n extra lines are ignored", " the dogs' ball\n"],  # kept
    }
    generate = fake_lm(lambda c, kind: by_type[kind](c))
    filters = build_filters(["differs", "length", "dedupe"], FilterOptions(max_words=40, max_length_ratio=2.0))
    rows = write_negatives(CAPTIONS[:2], list(by_type), PROMPTS, generate, filters)
    for row, caption in zip(rows, CAPTIONS[:2], strict=True):
        assert row.negatives == [f"{caption} and a dog", "a quoted caption", "the dogs' ball"]
        assert row.types == ["replace-rel", "add-obj", "add-obj"]
        assert row.dropped == {"replace-obj": {"same_as_positive": 1}, "replace-att": {"empty": 3},
                               "swap-att": {"duplicate": 1}, "swap-obj": {"too_long": 2},
                               "add-att": {"truncated": 1}}  # fmt: skip
    # each filter alone: without it, what it dropped is kept
    rows = write_negatives(CAPTIONS[:1], list(by_type), PROMPTS, generate, [], allow_truncated=True)
    assert len(rows[0].negatives) == 1 + 1 + 1 + 2 + 1 + 2 and rows[0].dropped == {"replace-att": {"empty": 3}}
    with pytest.raises(ValueError, match=r"--filters: unknown \['grammar'\]; available: \['dedupe', 'differs'"):
        build_filters(["differs", "grammar"], FilterOptions())
    with pytest.raises(ValueError, match="plausibility needs a scoring LM"):
        build_filters(["plausibility"], FilterOptions())


def test_an_lm_that_echoes_or_writes_nothing_fails_with_counts(tmp_path, lm_dir, captions_file, monkeypatch, capsys):
    echo = fake_lm(lambda c, kind: [f" {c}\n"] if kind != "add-obj" else [""])
    monkeypatch.setattr(LMGenerator, "__call__", lambda self, prompts, seed: echo(prompts, seed))
    out = tmp_path / "neg.jsonl"
    argv = flags(lm_dir, captions_file, out)
    argv[argv.index("--max_rows_without_negative") + 1] = "0.5"
    assert app.cli(argv) == 1
    err = capsys.readouterr().err
    assert "10 of 10 captions got no negative" in err and "echoes its caption or writes nothing" in err
    summary = json.loads((tmp_path / "neg.summary.json").read_text())
    assert summary["dropped"] == {"empty": 10, "same_as_positive": 20} and summary["negatives"] == 0
    assert not out.exists() and (tmp_path / "neg.jsonl.parts").is_dir()  # the lines stay: a rerun merges them
    argv[argv.index("--max_rows_without_negative") + 1] = "1.0"

    def unused(self, prompts, seed):
        raise AssertionError("every row is in the parts: nothing to generate")

    monkeypatch.setattr(LMGenerator, "__call__", unused)
    with pytest.raises(app.TooFewNegativesError, match="10 of 10"):  # none at all is never a success
        app.main(parse(argv))


# -- resume, processes ----------------------------------------------------------------------------------------------


def test_a_killed_run_resumes_to_the_uninterrupted_table(tmp_path, uninterrupted, lm_dir, captions_file):
    out, summary = uninterrupted
    parts = tmp_path / "parts"
    shutil.copytree(f"{out}.parts", parts)
    part = parts / "part-0.jsonl"
    lines = part.read_bytes().splitlines(keepends=True)
    assert len(lines) == 11
    # killed in the middle of batch 1 (rows 4-7), writing row 6: rows 0-5 are done, row 6 half written
    part.write_bytes(b"".join(lines[:6]) + lines[6][: len(lines[6]) // 2])
    resumed = tmp_path / "resumed.jsonl"
    got = app.main(parse(flags(lm_dir, captions_file, resumed, "--parts_dir", str(parts), "--keep_parts", "true")))
    assert resumed.read_text() == out.read_text()  # sampled text included: batch 1 is made whole again
    assert counts(got) == counts(summary) and got["this_run"]["rows_made"] == 5 and got["this_run"]["resumed"]
    rows = [row for row, _, _ in read_part(str(part))]
    assert sorted(rows) == list(range(11))  # each row once, the partial line gone
    # parts made with other flags are not mixed in
    (tmp_path / "again.jsonl.parts").mkdir()
    shutil.copy(parts / "settings.json", tmp_path / "again.jsonl.parts")
    with pytest.raises(PartsError, match=r"other settings \(seed: 3 then, 4 now\).*--overwrite_output"):
        app.main(parse(flags(lm_dir, captions_file, tmp_path / "again.jsonl", "--seed", "4")))
    with pytest.raises(app.OutputExistsError, match="resumed.jsonl exists: pass --overwrite_output"):
        app.main(parse(flags(lm_dir, captions_file, resumed)))
    held = OutputDirLock(str(tmp_path / "busy.jsonl.parts")).acquire()  # another run on the same parts
    try:
        with pytest.raises(OutputDirInUseError, match=r"another run is writing to --parts_dir .*busy\.jsonl\.parts"):
            app.main(parse(flags(lm_dir, captions_file, tmp_path / "busy.jsonl")))
    finally:
        held.release()


def test_a_sigkilled_run_resumes_to_the_uninterrupted_table(tmp_path, uninterrupted, lm_dir, captions_file):
    """A real kill: the process SIGKILLs itself halfway through writing batch 2's lines."""
    out, summary = uninterrupted
    killed = tmp_path / "killed.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "kill_negatives.py"), "2", "--",
                           *flags(lm_dir, captions_file, killed)], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    part = tmp_path / "killed.jsonl.parts" / "part-0.jsonl"
    assert not killed.exists() and not part.read_bytes().endswith(b"\n")  # cut in the middle of a line
    done = [row for row, _, _ in read_part(str(part))]
    assert 4 <= len(done) < 8 and done == list(range(len(done)))
    got = app.main(parse(flags(lm_dir, captions_file, killed)))
    assert killed.read_text() == out.read_text() and counts(got) == counts(summary)
    assert got["this_run"]["rows_made"] == 11 - len(done) and not (tmp_path / "killed.jsonl.parts").exists()


def test_two_processes_make_the_one_process_table(tmp_path, uninterrupted, lm_dir, captions_file):
    out, summary = uninterrupted
    two = tmp_path / "two.jsonl"
    def undo():  # gloo can abort a process at exit after the table is written (pytorch/pytorch#179291)
        shutil.rmtree(tmp_path / "two.jsonl.parts", ignore_errors=True)
        for path in (two, tmp_path / "two.summary.json"):
            path.unlink(missing_ok=True)

    accelerate_launch("-m", "hnc_clip.scripts.negatives", *flags(lm_dir, captions_file, two, "--keep_parts", "true"),
                      undo=undo)
    assert two.read_text() == out.read_text()
    got = json.loads((tmp_path / "two.summary.json").read_text())
    assert counts(got) == counts(summary) and got["this_run"]["processes"] == 2
    rows = {rank: [r for r, _, _ in read_part(str(tmp_path / f"two.jsonl.parts/part-{rank}.jsonl"))]
            for rank in (0, 1)}  # fmt: skip
    assert rows == {0: [0, 1, 2, 3, 8, 9, 10], 1: [4, 5, 6, 7]}  # batch j on process j mod 2, no row twice

    # killed before the merge, process 1 in the middle of row 7; resumed with one process
    part1 = tmp_path / "two.jsonl.parts" / "part-1.jsonl"
    lines = part1.read_bytes().splitlines(keepends=True)
    part1.write_bytes(b"".join(lines[:3]) + lines[3][:10])
    two.unlink()
    got = app.main(parse(flags(lm_dir, captions_file, two)))
    assert two.read_text() == out.read_text() and got["this_run"] | {"seconds": 0} == {
        "processes": 1, "rows_made": 1, "seconds": 0, "resumed": True}  # fmt: skip


def test_csv_and_parquet_inputs_keep_their_columns(tmp_path, lm_dir, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    edit = fake_lm(lambda c, kind: [f" {c} and a {kind}\n"])
    monkeypatch.setattr(LMGenerator, "__call__", lambda self, prompts, seed: edit(prompts, seed))
    rows = [{"file": f"{i}.jpg", "text": c, "score": i / 2} for i, c in enumerate(CAPTIONS)]
    (tmp_path / "in.csv").write_text("file,text,score\n" + "".join(f"{r['file']},{r['text']},{r['score']}\n"
                                                                   for r in rows))  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    for source, cell in (("in.csv", str), ("in.parquet", float)):
        out = tmp_path / f"{source}.jsonl"
        app.main(parse(flags(lm_dir, tmp_path / source, out, "--image_column", "file", "--caption_column", "text",
                             "--negative_types", "swap-obj", "add-att")))  # fmt: skip
        got = read_jsonl(out)
        assert [{k: r[k] for k in ("file", "text", "score")} for r in got] == [
            {**r, "score": cell(r["score"])} for r in rows]  # fmt: skip
        assert got[2]["negative_captions"] == [f"{CAPTIONS[2]} and a swap-obj", f"{CAPTIONS[2]} and a add-att"]
        assert got[2]["negative_types"] == ["swap-obj", "add-att"]


# -- generation, plausibility ---------------------------------------------------------------------------------------


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(lm_dir)
    generate = LMGenerator(model, AutoTokenizer.from_pretrained(lm_dir), GenerationSettings(max_new_tokens=6))
    prompts = [PROMPTS["swap-obj"].format(c) for c in ("a cat", CAPTIONS[1] + " on a sunny day", CAPTIONS[0])]
    assert len({len(generate.tokenizer(p)["input_ids"]) for p in prompts}) == 3  # padded in a batch
    assert generate(prompts) == [generate([p])[0] for p in prompts]
    sampled = LMGenerator(model, generate.tokenizer, GenerationSettings(max_new_tokens=6, do_sample=True,
                                                                       num_return_sequences=2))  # fmt: skip
    first, again = sampled(prompts, seed=1), sampled(prompts, seed=1)
    assert first == again and len(first[0]) == 2 and first != sampled(prompts, seed=2)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    tokenizer.chat_template = "{% for m in messages %}USER: {{ m['content'] }}\n{% endfor %}ASSISTANT:"
    chat = LMGenerator(model, tokenizer, GenerationSettings(max_new_tokens=6, chat_template=True))
    assert chat.prompt_text("hi") == "USER: hi\nASSISTANT:" and len(chat(prompts)) == 3


def test_plausibility_keeps_what_an_independent_log_likelihood_keeps(lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(lm_dir), AutoTokenizer.from_pretrained(lm_dir)

    def reference(text: str) -> float:  # transformers' own shifted cross-entropy, one unpadded text
        ids = torch.tensor([[tokenizer.eos_token_id, *tokenizer(text)["input_ids"]]])
        with torch.no_grad():
            return -model(input_ids=ids, labels=ids).loss.item()

    positives = CAPTIONS[:3]
    candidates = ["a red cup on a table", "zq xv kk", "a dog chasing a cat", "the the the the", "two men riding",
                  "horses riding two men on a beach"]  # fmt: skip
    scorer = LogLikelihoodScorer(model, tokenizer, batch_size=4)
    scores = scorer(positives + candidates)
    assert scores == pytest.approx([reference(t) for t in positives + candidates], abs=1e-5)
    per_row = [candidates[0:2], candidates[2:4], candidates[4:6]]
    gaps = sorted(reference(p) - reference(c) for p, cs in zip(positives, per_row, strict=True) for c in cs)
    margin = (gaps[2] + gaps[3]) / 2  # half the candidates on each side
    generate = fake_lm(lambda c, kind: [f" {t}\n" for t in per_row[positives.index(c)]])
    filters = build_filters(["plausibility"], FilterOptions(scorer=scorer, plausibility_margin=margin))
    rows = write_negatives(positives, ["replace-obj"], PROMPTS, generate, filters)
    want = [[c for c in cs if reference(c) >= reference(p) - margin] for p, cs in zip(positives, per_row, strict=True)]
    assert [r.negatives for r in rows] == want and sum(len(w) for w in want) == 3
    assert [r.positive_score for r in rows] == pytest.approx([reference(p) for p in positives], abs=1e-5)
    assert [s for r in rows for s in r.scores] == pytest.approx([reference(c) for w in want for c in w], abs=1e-5)
    pairs = [(reference(p), reference(c)) for p, w in zip(positives, want, strict=True) for c in w]
    assert lm.blind_accuracy(pairs) == sum(a > b for a, b in pairs) / 3 and lm.blind_accuracy([]) is None
    assert sum(r.dropped.get("replace-obj", {}).get("implausible", 0) for r in rows) == 3


def test_plausibility_through_the_application(tmp_path, lm_dir, captions_file):
    out = tmp_path / "p.jsonl"
    summary = app.main(parse(flags(lm_dir, captions_file, out, "--filters", "differs", "plausibility",
                                   "--plausibility_margin", "0.0", "--plausibility_model", str(lm_dir))))
    assert summary["candidates"] == 30 and summary["dropped"].get("implausible", 0) > 0  # random text: less likely
    assert summary["negatives"] + sum(summary["dropped"].values()) == 30
    # margin 0: every kept negative is at least as likely as its caption, so a blind model never finds it out
    assert summary["negatives_scored"] == summary["negatives"] > 0 and summary["blind_text_accuracy"] == 0.0


# -- bad input ------------------------------------------------------------------------------------------------------


def test_bad_input_tables_are_named(tmp_path, lm_dir):
    def table(name, text):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    cases = {
        table("a.jsonl", '{"image_path": "x.jpg", "text": "a cat"}\n'):
            r"a\.jsonl: line 1: --caption_column 'caption' not found; available columns: \['image_path', 'text'\]",
        table("b.jsonl", '{"image_path": "x.jpg", "caption": "a cat"}\n{"image_path": "y.jpg", "caption": 3}\n'):
            r"b\.jsonl: line 2: column 'caption' holds int, not text",
        table("c.jsonl", '{"image_path": "x.jpg", "caption": "a", "negative_captions": []}\n'):
            r"c\.jsonl: line 1: the input has a column 'negative_captions' already",
        table("d.jsonl", ""): r"d\.jsonl: no rows",
        table("e.jsonl", '{"image_path": "x.jpg", "caption": "a cat"}\n{"image_path": "y.jpg", "cap\n'):
            r"e\.jsonl: line 2: not a JSON object",
        table("f.json", "{}"): r"f\.json: an HNC \.json brings its own negatives",
    }  # fmt: skip
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image_path": ["x.jpg"], "caption": ["a cat"], "thumb": [b"\xff\xd8"]}),
                   tmp_path / "g.parquet")  # fmt: skip
    cases[tmp_path / "g.parquet"] = r"g\.parquet: row 0: column \['thumb'\] cannot be written as JSON"
    for path, message in cases.items():
        for _ in range(2):  # a second time: the failed run let go of its parts folder
            with pytest.raises(TableFormatError, match=message):
                app.main(parse(flags(lm_dir, path, tmp_path / f"{path.stem}.out.jsonl")))
    with pytest.raises(ValueError, match="--negatives_per_type > 1 needs --do_sample"):
        app.NegativesArguments("m", "i.jsonl", "o.jsonl", negatives_per_type=2)
    with pytest.raises(ValueError, match=r"--filters: unknown \['grammar'\]"):
        app.NegativesArguments("m", "i.jsonl", "o.jsonl", filters=["grammar"])
    with pytest.raises(ValueError, match=r"--negative_types: no prompt for \['swap-rel'\]"):
        app.main(parse(flags(lm_dir, tmp_path / "a.jsonl", tmp_path / "x.jsonl", "--negative_types", "swap-rel")))
    assert not os.path.exists(tmp_path / "a.out.jsonl")


def test_the_documented_commands_parse():
    """docs/models_and_data.md's LM-negatives commands name real flags of both tools."""
    import shlex

    from hnc_clip.scripts import train as train_app

    text = (REPO / "docs" / "models_and_data.md").read_text()
    block = text.split("# negatives written by a language model", 1)[1].split("\n\n", 1)[0].split("\n", 1)[1]
    make, train = [shlex.split(c) for c in block.replace("\\\n", " ").strip().split("\n")]
    args = parse(make[make.index("hnc_clip.scripts.negatives") + 1 :])
    assert args.chat_template and args.input_file == "captions.jsonl" and args.output_file == "negatives.jsonl"
    assert train[0] == "hnc-clip-train" and "negatives.jsonl" in train
    _, data, _ = train_app.make_parser().parse_args_into_dataclasses(args=train[1:])
    assert data.negative_caption_column == args.negative_caption_column and data.negatives_per_row == 1
