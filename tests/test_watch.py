"""Benchmarks scored while training (`--eval_benchmarks`, `hnc_clip.evaluation.watch`) and the objective that picks
the checkpoint (`--metric_for_best_model objective --load_best_model_at_end`), on a small synthetic world."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hnc_clip.evaluation.watch import Objective, WatchSpecError, parse_watch, parse_watches
from hnc_clip.scripts import train as train_app

from .helpers import tiny_world, training_args


def test_parse_watch():
    w = parse_watch("rel=pairs:data/test.json,images=img,types=relation+swap,max=50")
    assert (w.name, w.kind, w.path, w.images, w.types, w.max_items) == ("rel", "pairs", "data/test.json", "img",
                                                                        ("relation", "swap"), 50)  # fmt: skip
    w = parse_watch("zs=zeroshot:folder,classnames=c.json")
    assert (w.kind, w.path, w.classnames, w.max_items) == ("zeroshot", "folder", "c.json", None)
    w = parse_watch("inet=hub:org/imagenet,split=validation,image=jpg,label=cls,max=1000")
    assert (w.kind, w.path, w.split, w.image_column, w.label_column, w.max_items) == (
        "hub", "org/imagenet", "validation", "jpg", "cls", 1000)
    for bad, message in (("rel:pairs:x", "expected NAME=KIND:PATH"), ("r=retrieval:x", "expected NAME=KIND:PATH"),
                         ("r=pairs:x.json", "pairs needs images=FOLDER"), ("r=zeroshot:x,images=y", "takes options"),
                         ("r=zeroshot:x,max=0", "max must be a whole number"), ("1r=zeroshot:x", "NAME=KIND")):
        with pytest.raises(WatchSpecError, match=message):
            parse_watch(bad)
    with pytest.raises(WatchSpecError, match="each NAME once"):
        parse_watches(["a=zeroshot:x", "a=zeroshot:y"])


def test_objective_is_the_score_subject_to_the_floor():
    obj = Objective("relational_accuracy", "recognition_top1", floor_margin=0.05)
    floor = obj.floor_minimum({"eval_recognition_top1": 0.60})
    assert floor == pytest.approx(0.55)
    ok = obj.values({"eval_relational_accuracy": 0.7, "eval_recognition_top1": 0.56}, floor)
    assert ok["eval_objective"] == 0.7 and ok["eval_objective_feasible"] == 1.0
    below = obj.values({"eval_relational_accuracy": 0.9, "eval_recognition_top1": 0.50}, floor)
    assert below["eval_objective"] == pytest.approx(-0.1) and below["eval_objective_feasible"] == 0.0
    plain = Objective("hard_negative_accuracy").values({"eval_hard_negative_accuracy": 0.4}, None)
    assert plain["eval_objective"] == 0.4 and "eval_objective_floor_minimum" not in plain
    with pytest.raises(KeyError, match="eval_nope is not among"):
        Objective("nope").values({"eval_loss": 1.0}, None)


def test_watch_flags_are_checked(tmp_path):
    with pytest.raises(WatchSpecError, match="expected NAME=KIND:PATH"):
        training_args(tmp_path, eval_benchmarks=["zeroshot:x"], eval_strategy="steps")
    with pytest.raises(ValueError, match="scored at each evaluation: set --eval_strategy"):
        training_args(tmp_path, eval_benchmarks=["a=zeroshot:x"])
    with pytest.raises(ValueError, match="--metric_for_best_model objective needs --objective_metric"):
        training_args(tmp_path, metric_for_best_model="objective", eval_strategy="steps")
    with pytest.raises(ValueError, match="add --eval_on_start"):
        training_args(tmp_path, objective_metric="a_accuracy", objective_floor_metric="b_top1", eval_strategy="steps")
    with pytest.raises(ValueError, match="give that too"):
        training_args(tmp_path, objective_floor_metric="b_top1", eval_on_start=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return tiny_world(tmp_path_factory.mktemp("watch_world"),
                      num_val_images=4, num_test_images=6, num_recognition_per_class=2)


def test_training_watches_the_benchmarks_and_keeps_the_checkpoint_the_objective_chose(world, tmp_path):
    """Zero-shot recognition on the world's object folder and relational accuracy on its test pairs, scored at the
    start and every 2 steps, logged with the Trainer's evaluation; the kept model is the checkpoint of the highest
    `eval_objective` (the relational accuracy, − 1 where recognition fell below its start), which the test recomputes
    from the logged numbers."""
    w, out = world["world"], tmp_path / "out"
    argv = [
        "--model_name_or_path", world["model"], "--train_file", f"{w}/train.json", "--validation_file",
        f"{w}/val.json", "--image_dir", f"{w}/images", "--output_dir", str(out), "--cache_dir", str(tmp_path / "c"),
        "--do_train", "--max_steps", "6", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size",
        "32", "--learning_rate", "3e-3", "--use_cpu", "--dataloader_num_workers", "0", "--report_to", "none",
        "--seed", "0", "--logging_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2", "--eval_on_start",
        "--save_strategy", "steps", "--save_steps", "2", "--load_best_model_at_end", "--metric_for_best_model",
        "objective", "--objective_metric", "relational_accuracy", "--objective_floor_metric", "recognition_top1",
        "--objective_floor_margin", "0.0", "--eval_benchmarks",
        f"recognition=zeroshot:{w}/recognition,classnames={w}/recognition/classnames.json,"
        f"templates={w}/recognition/templates.json",
        f"relational=pairs:{w}/test.json,images={w}/images,types=relation+swap,max=20",
    ]  # fmt: skip
    train_app.main(*train_app.parse_args(argv))
    state = json.loads((out / "trainer_state.json").read_text())
    evals = {h["step"]: h for h in state["log_history"] if "eval_objective" in h}
    assert sorted(evals) == [0, 2, 4, 6]
    for h in evals.values():
        assert 0 <= h["eval_recognition_top1"] <= 1 and 0 <= h["eval_relational_accuracy"] <= 1
        assert h["eval_relational_items"] == 20 and h["eval_recognition_seconds"] > 0
        assert {"eval_relational_accuracy_relation", "eval_relational_accuracy_swap"} <= set(h)
    floor = evals[0]["eval_recognition_top1"]  # margin 0: recognition may not fall below the start
    assert (out / "objective_floor.json").exists()
    for h in evals.values():
        feasible = h["eval_recognition_top1"] >= floor
        assert h["eval_objective_floor_minimum"] == pytest.approx(floor)
        assert h["eval_objective"] == pytest.approx(h["eval_relational_accuracy"] - (0 if feasible else 1))
    # the Trainer's choice among the saved checkpoints (the first of equal ones), and the model it kept
    scores = [(evals[s]["eval_objective"], -s) for s in (2, 4, 6)]
    best_step = -max(scores)[1]
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    kept = load_file(out / "model.safetensors")
    chosen = load_file(out / f"checkpoint-{best_step}" / "model.safetensors")
    assert all(torch.equal(kept[k], chosen[k]) for k in kept)
    # the weights moved between checkpoints, so keeping the right one is not vacuous
    others = [load_file(out / f"checkpoint-{s}" / "model.safetensors") for s in (2, 4, 6) if s != best_step]
    assert all(any(not torch.equal(kept[k], o[k]) for k in kept) for o in others)
    results = json.loads((out / "all_results.json").read_text())
    assert "eval_recognition_top1" in results and "eval_objective" in results  # the final evaluation too


def test_a_resumed_run_reads_the_floor_of_its_start_and_says_when_it_cannot(tmp_path):
    """`EvaluationExtras.floor`: measured at step 0 and saved; after a restart (step > 0, nothing in memory) read back
    from objective_floor.json; without that file, an error instead of a floor from the resumed model."""
    from types import SimpleNamespace

    from hnc_clip.objective import EvaluationExtras

    def floor(step, metrics):  # a fresh trainer's: nothing in memory
        args = SimpleNamespace(eval_benchmarks=None, objective_metric="rel_accuracy", objective_floor_metric="zs_top1",
                               objective_floor_margin=0.02, output_dir=str(tmp_path), should_save=True)  # fmt: skip
        return EvaluationExtras(args, None, deepspeed=False).floor(metrics, step)

    with pytest.raises(RuntimeError, match="no starting value"):
        floor(40, {"eval_zs_top1": 0.3})
    assert floor(0, {"eval_zs_top1": 0.5}) == pytest.approx(0.48)
    assert floor(40, {"eval_zs_top1": 0.3}) == pytest.approx(0.48)  # the start's, not 0.28


def test_eval_benchmarks_are_refused_under_deepspeed():
    from types import SimpleNamespace

    from hnc_clip.objective import EvaluationExtras

    with pytest.raises(ValueError, match="not under DeepSpeed"):
        EvaluationExtras(SimpleNamespace(eval_benchmarks=["a=zeroshot:x"]), object(), deepspeed=True)


def test_a_datasets_set_is_watched_like_an_image_folder(world, tmp_path):
    """`hub:` reads a `datasets` set (here a local folder of parquet files, as a Hub set would be): the same top-1 as
    the image folder it was made from, its class names from the label column; columns are checked by name."""
    import datasets
    from PIL import Image as PILImage
    from transformers import CLIPModel, CLIPProcessor

    from hnc_clip.evaluation.watch import BenchmarkWatch

    w = world["world"]
    folder = datasets.load_dataset("imagefolder", data_dir=f"{w}/recognition", split="train")
    names = json.loads(open(f"{w}/recognition/classnames.json").read())
    rows = {"img": [PILImage.open(x["path"]).convert("RGB") for x in
                    folder.cast_column("image", datasets.Image(decode=False))["image"]],
            "y": folder["label"]}  # fmt: skip
    labels = datasets.ClassLabel(names=[names[f] for f in folder.features["label"].names])
    parquet = tmp_path / "hubset" / "data"
    parquet.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=datasets.Features(img=datasets.Image(), y=labels)).to_parquet(
        str(parquet / "test-00000.parquet"))
    specs = parse_watches([f"folder=zeroshot:{w}/recognition,classnames={w}/recognition/classnames.json",
                           f"hubset=hub:{tmp_path / 'hubset'},image=img,label=y"])  # fmt: skip
    model, processor = CLIPModel.from_pretrained(world["model"]), CLIPProcessor.from_pretrained(world["model"])
    out = BenchmarkWatch(specs, processor, batch_size=16)(model)
    assert out["hubset_items"] == out["folder_items"] == len(folder)
    assert out["hubset_top1"] == pytest.approx(out["folder_top1"]) and out["hubset_top5"] == pytest.approx(
        out["folder_top5"])
    with pytest.raises(WatchSpecError, match="no image column 'image'.*image=COLUMN"):
        BenchmarkWatch(parse_watches([f"h=hub:{tmp_path / 'hubset'},label=y"]), processor)
