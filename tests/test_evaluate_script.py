"""The evaluation application (`hnc_clip.scripts.evaluate`, `eval/run_eval.py`) end to end, WiSE-FT interpolation,
model cards and argument checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from hnc_clip.evaluation.wise import check_wise_configs, parse_alphas, wise_interpolate, wise_name
from hnc_clip.scripts.evaluate import EvalArguments, main, make_parser, model_names, run

pytestmark = pytest.mark.usefixtures("eval_single_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def eval_tuned_copy(eval_tuned_clip_dir, tmp_path) -> str:
    """A writable copy of the tuned checkpoint (its README.md gets the results card)."""
    dst = str(tmp_path / "hnc-tuned")
    shutil.copytree(eval_tuned_clip_dir, dst)
    return dst


def test_end_to_end_on_real_samples(
    eval_tiny_clip_dir, eval_tuned_copy, eval_sample_files, eval_sample_image_dir, eval_zeroshot_dir, tmp_path
):
    out_dir = tmp_path / "out"
    results = main(*make_parser().parse_args_into_dataclasses(args=
        [
            "--task", "pairwise", "retrieval", "zeroshot",
            "--model_name_or_path", eval_tiny_clip_dir, eval_tuned_copy,
            "--data_file", eval_sample_files["test"], eval_sample_files["train"],
            "--image_dir", eval_sample_image_dir,
            "--zeroshot_dir", eval_zeroshot_dir,
            "--cache_dir", str(tmp_path / "cache"),
            "--wise_alpha", "0.5",
            "--push_results",
            "--batch_size", "128",
            "--device", "cpu",
            "--output_dir", str(out_dir),
        ]
    ))  # fmt: skip
    base, tuned = os.path.basename(eval_tiny_clip_dir), "hnc-tuned"
    assert list(results) == [base, tuned, f"{tuned}@wise0.5"]
    for tasks in results.values():
        assert set(tasks) == {"pairwise", "retrieval", "zeroshot"}
        pw = tasks["pairwise"]
        # pairs whose positive equals their negative (1 in the test sample, 4 in the train one) excluded, counted
        assert pw["num_pairs"] == 871 + 590 and pw["identical_pairs"] == 5 and pw["num_input_pairs"] == 872 + 594
        assert pw["num_images"] == 105 and pw["missing_images"] == 0
        assert 0.0 <= pw["accuracy"] <= 1.0 and pw["accuracy_by_type"]
        assert {"relation", "relation_subj"} <= set(pw["accuracy_by_type"])  # test and train type names
        assert all(f"{d}_R@{k}" in tasks["retrieval"] for d in ("image_to_text", "text_to_image") for k in (1, 5, 10))
        assert {"top1", "top5", "mean_per_class_recall"} <= set(tasks["zeroshot"])

    on_disk = json.loads((out_dir / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    table = (out_dir / "results.md").read_text()
    assert f"| metric | {base} | {tuned} | {tuned}@wise0.5 |" in table
    for png in ("accuracy_by_type.png", "similarity_hist.png", "wise_tradeoff.png"):
        assert (out_dir / png).stat().st_size > 1000
    config = json.loads((out_dir / "eval_config.json").read_text())
    assert config["data"]["pairwise"]["pairs"] == 1466

    card = open(os.path.join(eval_tuned_copy, "README.md")).read()  # only the tuned model gets a card
    assert "model-index" in card and "Hard-negative caption selection" in card
    assert not os.path.exists(os.path.join(eval_tiny_clip_dir, "README.md"))


def test_script_runs_as_a_file(eval_tiny_clip_dir, eval_sample_files, eval_sample_image_dir, tmp_path):
    # `python eval/run_eval.py` from another directory: the thin entry point finds the installed package.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, os.path.join(REPO, "eval", "run_eval.py"),
        "--model_name_or_path", eval_tiny_clip_dir, "--data_file", eval_sample_files["train"],
        "--image_dir", eval_sample_image_dir, "--output_dir", str(tmp_path / "o"), "--max_pairs", "50",
        "--no_plots", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| accuracy |" in proc.stdout
    assert json.loads((tmp_path / "o" / "results.json").read_text())


def test_missing_images_reported_in_results(eval_tiny_clip_dir, eval_sample_files, eval_sample_image_dir, tmp_path):
    image_dir = tmp_path / "some_images"
    shutil.copytree(eval_sample_image_dir, image_dir)
    os.remove(image_dir / "2386621.jpg")  # one of the five train-sample images
    args = EvalArguments(
        model_name_or_path=[eval_tiny_clip_dir], data_file=[eval_sample_files["train"]], image_dir=str(image_dir),
        output_dir=str(tmp_path / "o"), plots=False, device="cpu",
    )  # fmt: skip
    pw = run(args)[os.path.basename(eval_tiny_clip_dir)]["pairwise"]
    assert pw["missing_images"] == 1
    assert pw["skipped_pairs"] > 0 and pw["num_pairs"] + pw["skipped_pairs"] == 594


def test_unknown_format_error_from_run(eval_tiny_clip_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"foo": 1}]))
    args = EvalArguments(model_name_or_path=[eval_tiny_clip_dir], data_file=[str(bad)], output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Supported formats") as err:
        run(args)
    assert "sugarcrepe" in str(err.value) and "aro_vg_relation" in str(err.value)


def test_wise_interpolation_endpoints(eval_tiny_clip_dir, eval_tuned_clip_dir):
    from hnc_clip.evaluation.encode import load_clip

    base, _ = load_clip(eval_tiny_clip_dir, "cpu")
    tuned, _ = load_clip(eval_tuned_clip_dir, "cpu")
    b, t = base.state_dict(), tuned.state_dict()
    at0 = wise_interpolate(base, tuned, 0.0).state_dict()
    at1 = wise_interpolate(base, tuned, 1.0).state_dict()
    mid = wise_interpolate(base, tuned, 0.5).state_dict()
    for key in b:
        assert torch.equal(at0[key], b[key]) or not b[key].is_floating_point(), key
        assert torch.equal(at1[key], t[key]), key
        if b[key].is_floating_point():
            assert torch.allclose(mid[key], (b[key] + t[key]) / 2, atol=1e-6), key
    assert any(not torch.equal(b[k], t[k]) for k in b)  # the two checkpoints really differ
    assert torch.equal(tuned.state_dict()[next(iter(t))], t[next(iter(t))])  # inputs untouched


def test_wise_rejects_other_architecture(eval_tiny_clip_dir, tmp_path):
    from hnc_clip.evaluation.encode import load_clip
    from hnc_clip.tiny import save_tiny_clip

    other = save_tiny_clip(str(tmp_path / "wide"), ["a photo of a cat"], hidden_size=48, projection_dim=16)
    with pytest.raises(ValueError, match="share the architecture"):
        check_wise_configs([eval_tiny_clip_dir, other])
    base, _ = load_clip(eval_tiny_clip_dir, "cpu")
    wide, _ = load_clip(other, "cpu")
    with pytest.raises(ValueError, match="one architecture"):
        wise_interpolate(base, wide, 0.5)


def test_wise_helpers():
    assert parse_alphas("0.25, 0.5,1") == [0.25, 0.5, 1.0]
    assert parse_alphas(None) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        parse_alphas("1.5")
    assert wise_name("hnc-tuned", 0.5) == "hnc-tuned@wise0.5"


def test_model_card_merges_and_replaces(tmp_path):
    from huggingface_hub import ModelCard

    from hnc_clip.card import publish_results, write_local_model_card

    model_dir = tmp_path / "ckpt"
    model_dir.mkdir()
    (model_dir / "README.md").write_text(
        "---\nlicense: mit\nmodel-index:\n- name: ckpt\n  results:\n  - task:\n      type: other-task\n"
        "    dataset:\n      name: other\n      type: other\n    metrics:\n    - type: f1\n      value: 0.3\n"
        "---\n\n# ckpt\n\nHand-written text.\n"
    )
    datasets = {"pairwise": ("hnc_test", "hnc_test_sample"), "zeroshot": ("imagefolder", "pets")}
    results = {"pairwise": {"accuracy": 0.61, "macro_accuracy": 0.55}, "zeroshot": {"top1": 0.4, "top5": 0.9}}
    write_local_model_card(str(model_dir), "ckpt", results, datasets)
    results["pairwise"]["accuracy"] = 0.7
    path = write_local_model_card(str(model_dir), "ckpt", results, datasets)  # second run replaces, not appends

    card = ModelCard.load(path)
    values = {(r.task_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert values[("other-task", None)] == 0.3  # unrelated results kept
    assert values[("image-text-matching", "Pairwise accuracy")] == 0.7
    assert values[("zero-shot-image-classification", "Top-1 accuracy")] == 0.4
    assert len(card.data.eval_results) == 1 + 2 + 2
    assert card.data.license == "mit" and "Hand-written text." in card.text
    assert card.text.count("## Evaluation results") == 1

    # A Hub id without --push_to_hub: nothing is pushed, the card is written to the output folder for review.
    info = publish_results("someone/clip-hnc", "someone/clip-hnc", results, datasets, str(tmp_path / "o"))
    assert info["pushed"] is False and os.path.isfile(info["card"])


def test_argument_checks(eval_tiny_clip_dir):
    with pytest.raises(ValueError, match="--task: unknown"):
        EvalArguments(model_name_or_path=["m"], task=["classify"], data_file=["x"])
    with pytest.raises(ValueError, match="needs --data_file"):
        EvalArguments(model_name_or_path=["m"], task=["pairwise"])
    with pytest.raises(ValueError, match="needs --zeroshot_dir"):
        EvalArguments(model_name_or_path=["m"], task=["zeroshot"])
    with pytest.raises(ValueError, match="base and at least one tuned"):
        EvalArguments(model_name_or_path=["m"], data_file=["x"], wise_alpha="0.5")
    with pytest.raises(ValueError, match="--data_format"):
        EvalArguments(model_name_or_path=["m"], data_file=["x"], data_format="csv")
    assert model_names(["org/clip", eval_tiny_clip_dir]) == ["org/clip", os.path.basename(eval_tiny_clip_dir)]
    assert model_names(["a/ckpt", "b/ckpt"]) == ["a/ckpt", "b/ckpt"]  # Hub-style ids kept whole


def test_every_model_is_checked_before_the_first_is_evaluated(eval_tiny_clip_dir, eval_sample_files,
                                                              eval_sample_image_dir, tmp_path, monkeypatch):
    """A bad second --model used to be found after the first was evaluated (no results.json); now every model is
    checked first and every problem is named at once."""
    import hnc_clip.scripts.evaluate as app

    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(eval_tiny_clip_dir, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    (tmp_path / "baseline.pt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    evaluated = []
    monkeypatch.setattr(app, "evaluate_model", lambda *a, **k: evaluated.append(a) or ({}, None))
    models = [eval_tiny_clip_dir, str(no_config), str(no_weights), str(tmp_path / "baseline.pt"),
              str(tmp_path / "notes.txt")]  # fmt: skip
    common = dict(data_file=[eval_sample_files["train"]], image_dir=eval_sample_image_dir, plots=False, device="cpu",
                  num_workers=0, output_dir=str(tmp_path / "eval"))  # fmt: skip
    with pytest.raises(ValueError, match=r"4 of 5 models cannot be loaded, nothing evaluated") as err:
        run(EvalArguments(model_name_or_path=models, **common))
    text = str(err.value)
    assert f"{no_config}: " in text and f"{no_weights}: no .safetensors weights" in text
    assert "baseline.pt: a pickle" in text and "notes.txt: not a model folder" in text
    assert evaluated == [] and not (tmp_path / "eval" / "results.json").exists()


@pytest.mark.parametrize(
    "make, flag",
    [
        (lambda: EvalArguments(model_name_or_path=["m"], data_file=["x"], thresholds="1.0,nan"), "--thresholds"),
        (lambda: EvalArguments(model_name_or_path=["m"], data_file=["x"], thresholds="inf"), "--thresholds"),
        (lambda: EvalArguments(model_name_or_path=["m"], data_file=["x"], max_pairs=0), "--max_pairs"),
        (lambda: EvalArguments(model_name_or_path=["m"], data_file=["x"], max_images=0), "--max_images"),
        (lambda: __import__("hnc_clip.scripts.search").scripts.search.SearchArguments(floor_margin=float("nan")),
         "--floor_margin"),
        (lambda: __import__("hnc_clip.scripts.search").scripts.search.SearchArguments(
            learning_rate_range=[1e-4, float("inf")]), "--learning_rate_range"),
    ],
)
def test_non_finite_and_empty_numbers_are_refused_at_parse_time(make, flag):
    """NaN passes every range check (all comparisons with it are false) and used to make every Acc@tau 0 or the
    floor never binding; --max_pairs 0 used to mean every pair."""
    with pytest.raises(ValueError, match=flag):
        make()
