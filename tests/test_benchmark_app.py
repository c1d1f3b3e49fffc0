"""`eval/run_eval.py --benchmark compositionality --model A B` on fixtures of all 13 compositionality benchmarks:
the papers' table (md/csv/json/png) and the model card; and the encoder's bad-input and precision behaviour."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from . import benchmark_fixtures as fx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def benchmark_dir(tmp_path_factory):
    return fx.build_benchmark_dir(tmp_path_factory.mktemp("benchmarks"))


def test_compositionality_suite_writes_the_table_and_the_card(
    benchmark_dir, eval_tiny_clip_dir, eval_tuned_clip_dir, tmp_path
):
    tuned = tmp_path / "hnc-tuned"
    shutil.copytree(eval_tuned_clip_dir, tuned)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        os.path.join(REPO, "eval", "run_eval.py"),
        "--benchmark",
        "compositionality",
        "--model",
        eval_tiny_clip_dir,
        str(tuned),
        "--benchmark_dir",
        str(benchmark_dir),
        "--output_dir",
        str(out),
        "--device",
        "cpu",
        "--num_workers",
        "1",
        "--push_results",
    ]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    base = os.path.basename(eval_tiny_clip_dir)
    assert list(results) == [base, "hnc-tuned"]
    assert set(results[base]["benchmarks"]) == set(fx.BUILDERS)
    table = json.loads((out / "benchmarks.json").read_text())
    assert table["columns"] == ["model", *fx.BUILDERS, "comp. avg"]
    for row in table["rows"]:
        bench = results[row["model"]]["benchmarks"]
        for name in fx.BUILDERS:
            assert row[name] == pytest.approx(100 * bench[name]["headline"])
        assert row["comp. avg"] == pytest.approx(sum(row[n] for n in fx.BUILDERS) / len(fx.BUILDERS))
    with open(out / "benchmarks.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == [base, "hnc-tuned"]
    md = (out / "benchmarks.md").read_text()
    assert f"| {base} |" in md and "comp. avg" in md and "| model | hnc_test | sugarcrepe |" in md
    assert (out / "benchmarks.png").stat().st_size > 2000
    assert "## aro_vg_relation" in (out / "benchmarks_by_type.md").read_text()
    assert "| model | hnc_test |" in proc.stdout
    assert results[base]["benchmarks"]["hnc_test"]["identical_pairs"] == 1

    card = (tuned / "README.md").read_text()
    assert "model-index" in card and "dataset:" in card and "winoground" in card and "SugarCrepe" in card
    assert not os.path.exists(os.path.join(eval_tiny_clip_dir, "README.md"))


def test_model_name_or_path_stays_an_alias_and_unknown_benchmarks_list_the_registry(eval_tiny_clip_dir):
    from hnc_clip.evaluation.benchmarks import BenchmarkError
    from hnc_clip.scripts.evaluate import make_parser

    (a,) = make_parser().parse_args_into_dataclasses(args=["--model_name_or_path", "x", "--benchmark", "valse"])
    (b,) = make_parser().parse_args_into_dataclasses(args=["--model", "x", "--benchmark", "valse"])
    assert a.model_name_or_path == b.model_name_or_path == ["x"] and a.task == [] and a.precision == "fp32"
    with pytest.raises(BenchmarkError, match="registry has"):
        make_parser().parse_args_into_dataclasses(args=["--model", "x", "--benchmark", "sugar_crepe"])


def test_corrupt_image_in_a_worker_is_counted_not_fatal(
    eval_tiny_clip_dir, eval_sample_files, eval_sample_image_dir, tmp_path
):
    from hnc_clip.scripts.evaluate import EvalArguments, run

    image_dir = tmp_path / "images"
    shutil.copytree(eval_sample_image_dir, image_dir)
    (image_dir / "2386621.jpg").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # one of the five train images
    args = EvalArguments(
        model_name_or_path=[eval_tiny_clip_dir],
        data_file=[eval_sample_files["train"]],
        image_dir=str(image_dir),
        output_dir=str(tmp_path / "o"),
        plots=False,
        device="cpu",
        num_workers=1,
    )
    pw = run(args)[os.path.basename(eval_tiny_clip_dir)]["pairwise"]
    assert pw["unreadable_images"] == 1 and pw["missing_images"] == 0 and pw["num_images"] == 4
    assert "2386621.jpg" in pw["skipped_examples"]["unreadable_images"][0]
    assert pw["num_pairs"] + pw["skipped_pairs"] == pw["num_input_pairs"] == 594


def test_precision_fp32_by_default_and_bf16_on_request(eval_tiny_clip_dir, tmp_path):
    from hnc_clip.evaluation.encode import ClipEncoder, load_clip

    model, processor = load_clip(eval_tiny_clip_dir, "cpu")
    images = [Image.new("RGB", (40, 30), (10 * i, 200 - 10 * i, 90)) for i in range(4)]
    calls = []
    real = torch.autocast

    def spy(*args, **kwargs):
        calls.append(kwargs.get("dtype"))
        return real(*args, **kwargs)

    fp32 = ClipEncoder(model, processor, device="cpu", progress=False)
    assert fp32.precision == "fp32"
    torch.autocast = spy
    try:
        a = fp32.encode_images(images)
        assert calls == []  # no autocast at all in fp32
        b = ClipEncoder(model, processor, device="cpu", progress=False, precision="bf16").encode_images(images)
        assert calls and all(c == torch.bfloat16 for c in calls)
    finally:
        torch.autocast = real
    assert a.dtype == b.dtype == torch.float32
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=5e-2)  # bf16 really ran, and is close
    with pytest.raises(ValueError, match="precision"):
        ClipEncoder(model, processor, device="cpu", precision="int8")
