"""The benchmarks run end to end and report their numbers (smoke runs: no speed thresholds here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _run(script: str, *args: str, timeout: int = 120) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_train_throughput_smoke(tmp_path):
    out = tmp_path / "train.json"
    stdout = _run(
        "train_throughput.py",
        "--device",
        "cpu",
        "--model",
        "tiny",
        "--steps",
        "2",
        "--warmup_steps",
        "1",
        "--batch_size",
        "4",
        "--num_workers",
        "0",
        "--image_cache",
        "--pairs_per_image",
        "4",
        "--work_dir",
        str(tmp_path),
        "--output",
        str(out),
        "--profile",
        "ours",
        "--profile_steps",
        "1",
        "--profile_dir",
        str(tmp_path / "prof"),
    )
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["variants"]}
    assert list(rows) == ["hf_default", "ours", "ours_cache"]
    # The profiled step runs after the measured ones and is not counted in them.
    assert "aten::" in (tmp_path / "prof" / "ours_ops.txt").read_text()
    assert (tmp_path / "prof" / "ours_trace.json.gz").stat().st_size > 0
    summary = rows["ours"]["profile"]  # where the profiled step's time went (also in prof/ours_summary.json)
    assert summary["steps"] == 1 and summary["wall_ms_per_step"] > 0 and summary["optimizer_step_ms_per_step"] > 0
    assert summary["top_gpu_kernels"] == {} and summary["gpu_kernel_ms_per_step"] == 0  # no GPU, no kernels
    assert json.loads((tmp_path / "prof" / "ours_summary.json").read_text()) == summary
    for name, row in rows.items():
        assert "error" not in row, (name, row.get("error"))
        assert row["steps_measured"] == 2 and row["samples_per_s"] > 0 and row["tflops_per_s"] > 0, name
        assert name in stdout
    # Padding to 77 is what the baseline pays for; the counted FLOPs must show it.
    assert rows["hf_default"]["caption_tokens_mean"] == 77 > rows["ours"]["caption_tokens_mean"]
    assert rows["hf_default"]["tflop_per_step"] > rows["ours"]["tflop_per_step"]
    assert "samples/s" in stdout and "TFLOP/s" in stdout
    assert sorted(os.listdir(tmp_path)) == ["prof", "train.json"]  # the synthetic data are cleaned up


def test_convert_hnc_smoke(tmp_path):
    out = tmp_path / "convert.json"
    stdout = _run("convert_hnc.py", "--size_mb", "2", "--num_proc", "1", "2", "--work_dir", str(tmp_path),
                  "--output", str(out))
    rows = json.loads(out.read_text())["rows"]
    # a quarter, then full size; one row per process count
    assert [(r["size_mb"] < 1, r["num_proc"]) for r in rows] == [(True, 1), (True, 2), (False, 1), (False, 2)]
    assert 2 <= rows[-1]["size_mb"] < 3
    for r in rows:
        assert r["pairs"] > 0 and r["pairs_per_s"] > 0 and r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0
        assert 350 < r["bytes_per_caption"] < 650  # shaped like the real file (~490 bytes per caption)
    assert rows[1]["worker_peak_rss_mb"] > 0 == rows[0]["worker_peak_rss_mb"]  # the 2-process row has workers
    assert rows[2]["pairs"] == rows[3]["pairs"] > 3 * rows[0]["pairs"]
    assert "pairs/s" in stdout and "peak MB" in stdout
    assert os.listdir(tmp_path) == ["convert.json"]  # generated JSON files deleted


def test_attention_backends_smoke(tmp_path):
    out = tmp_path / "attention.json"
    stdout = _run("attention_backends.py", "--device", "cpu", "--pairs", "4", "--backends", "flash", "efficient",
                  "math", "--compile_backend", "aot_eager", "--warmup", "1", "--iters", "2", "--output", str(out))
    result = json.loads(out.read_text())
    rows = {(r["tower"], r["mode"], r["backend"]): r for r in result["rows"]}
    assert len(rows) == 2 * 2 * 3  # towers × modes × backends
    # CLIP's shapes: vision 50 tokens, not causal; text causal; batches scale with the pairs
    assert rows["vision", "eager", "math"]["length"] == 50 and not rows["vision", "eager", "math"]["causal"]
    assert rows["text", "eager", "math"]["causal"] and rows["text", "eager", "math"]["batch"] == 8
    for key in [("vision", "eager", "math"), ("text", "compiled", "math"), ("vision", "compiled", "flash")]:
        assert rows[key]["forward_backward_ms"] > 0 and rows[key]["forward_ms"] > 0, key  # timed (no thresholds)
    assert "error" in rows["vision", "eager", "efficient"]  # no memory-efficient kernel on the CPU: said, not hidden
    assert "vs flash" in stdout and "unavailable" in stdout


def test_eval_benchmarks_smoke(tmp_path):
    out = tmp_path / "suite.jsonl"
    stdout = _run(
        "eval_benchmarks.py", "--model", "tiny", "--repeat", "1", "--num_workers", "0", "--output", str(out),
        "--benchmarks", "sugarcrepe", "winoground",
    )  # fmt: skip
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["names"] == ["sugarcrepe", "winoground"] and record["items"] == 35 + 8
    assert record["cpu_s_per_1000_items"] > 0 and record["wall_s_per_1000_items"] > 0
    assert json.dumps(record) in stdout


def test_watch_cost_smoke(tmp_path):
    out = tmp_path / "watch.json"
    stdout = _run("watch_cost.py", "--model", "tiny", "--repeat", "1", "--test_images", "3", "--per_class", "1",
                  "--image_size", "32", "--output", str(out))
    result = json.loads(out.read_text())
    assert result["benchmarks"]["recognition"]["items"] == 24 and result["benchmarks"]["pairs"]["items"] == 24
    assert all(r["seconds_per_1000_items"] > 0 for r in result["benchmarks"].values())
    assert "s/1000 items" in stdout


def test_fsc_local_cost_smoke(tmp_path):
    out = tmp_path / "fsc_local.json"
    stdout = _run("fsc_local_cost.py", "--model", "tiny", "--repeat", "1", "--batch_size", "4", "--negatives", "2",
                  "--output", str(out))
    result = json.loads(out.read_text())
    assert result["patches"] == (224 // 32) ** 2 and result["negatives"] == 2
    assert result["step_seconds_with_local"] > 0 and result["local_term_seconds"] > 0
    assert result["token_embedding_mib"] == round(4 * (49 + 3 * 24) * 64 * 4 / 2**20, 2)
    assert '"ratio"' in stdout


def test_soak_smoke(tmp_path):
    out = tmp_path / "soak.json"
    stdout = _run("soak.py", "--steps", "20", "--warmup_steps", "4", "--samples", "3", "--images", "24",
                  "--batch_size", "8", "--corrupt_every", "6", "--num_workers", "1", "--work_dir", str(tmp_path),
                  "--output", str(out))
    result = json.loads(out.read_text())
    assert [r["step"] for r in result["rows"]] == [4, 12, 20]
    assert all(r["main_rss_mb"] > 0 and r["workers"] == 1 and r["workers_rss_mb"] > 0 for r in result["rows"])
    assert result["train_skipped_images"] > 0 and result["train_pairs"] > 0  # the corrupt images were met
    assert "main process:" in stdout and "MB per 1,000 steps" in stdout
    assert os.listdir(tmp_path) == ["soak.json"]  # the synthetic data are cleaned up


def test_negative_rules_smoke(tmp_path):
    out = tmp_path / "negative_rules.json"
    stdout = _run("negative_rules.py", "--captions", "60", "--output", str(out))
    result = json.loads(out.read_text())
    assert [r["parser"] for r in result["rows"]][:2] == ["lexicon", "spacy"]  # the test extra installs spaCy
    for row in result["rows"]:
        assert row["parse"]["captions_per_s"] > 0 and set(row["groups"]) == {"swap", "replace", "shuffle", "all"}
        assert all(g["captions_per_s"] > 0 and 0.5 < g["covered"] <= 1 for g in row["groups"].values())
    assert "| lexicon |" in stdout and "| spacy |" in stdout


def test_streaming_smoke(tmp_path):
    out = tmp_path / "streaming.json"
    stdout = _run("streaming.py", "--shards", "2", "--per_shard", "12", "--num_workers", "0", "1", "--passes", "2",
                  "--batch_size", "8", "--rss_every", "1", "--out", str(out))  # fmt: skip
    rows = json.loads(out.read_text())
    assert [(r["workers"], r["negatives"]) for r in rows] == [(0, "-"), (0, "all"), (1, "-"), (1, "all")]
    assert all(r["samples"] == 48 and r["samples_per_s"] > 0 for r in rows)  # 2 passes over 24 samples, no more
    assert rows[2]["workers_rss_mb"][0] > 0 and rows[0]["workers_rss_mb"] == [0, 0]
    assert "| 1 | all | 48 |" in stdout


def test_negative_lm_smoke(tmp_path):
    out = tmp_path / "negative_lm.json"
    stdout = _run("negative_lm.py", "--n_layer", "1", "--n_embd", "32", "--captions", "8", "--batch_sizes", "4",
                  "--max_new_tokens", "4", "--types", "replace-obj", "swap-att", "--output", str(out))  # fmt: skip
    result = json.loads(out.read_text())
    assert result["parameters"] > 0 and result["captions"] == 8 and result["types"] == ["replace-obj", "swap-att"]
    rows = result["rows"]
    assert [(r["batch_size"], r["sampling"], r["plausibility"]) for r in rows] == [(4, False, False), (4, True, False),
                                                                                  (4, False, True)]  # fmt: skip
    assert all(r["captions_per_s"] > 0 and r["prompts_per_s"] == pytest.approx(2 * r["captions_per_s"]) for r in rows)
    assert "| 4 | sampled | - |" in stdout
