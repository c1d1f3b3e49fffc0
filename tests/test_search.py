"""The hyper-parameter search (`hnc_clip.scripts.search`, `hnc-clip-search`) on a small synthetic world: real optuna
trials through `Trainer.hyperparameter_search`, the objective and floor as documented, and a best.yaml that trains."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import yaml

from hnc_clip.scripts import search
from hnc_clip.scripts import train as train_app

from .helpers import tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return tiny_world(tmp_path_factory.mktemp("search_world"),
                      num_val_images=8, num_test_images=4, num_recognition_per_class=1)


def flags(world, out) -> list[str]:
    w = world["world"]
    return [
        "--model_name_or_path", world["model"], "--train_file", f"{w}/train.json", "--validation_file",
        f"{w}/val.json", "--image_dir", f"{w}/images", "--output_dir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32", "--use_cpu",
        "--dataloader_num_workers", "0", "--report_to", "none", "--save_strategy", "no", "--seed", "0",
        "--cache_dir", str(out / "cache"), "--n_trials", "3", "--loss_types", "hnc", "pairwise",
        "--learning_rate_range", "1e-4", "1e-3", "--objective_types", "relation", "swap",
    ]  # fmt: skip


def test_search_records_trials_and_writes_a_best_config_that_trains(world, tmp_path):
    out = tmp_path / "search"
    summary = search.main(*search.make_parser().parse_args_into_dataclasses(args=flags(world, out)))
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 3 == len(summary["trials"])
    base_floor = summary["base"]["eval_floor_hard_negative_accuracy"]
    assert summary["floor_minimum"] == pytest.approx(base_floor - 0.01)
    for t in trials:
        p = t["params"]
        assert p["loss_type"] in ("hnc", "pairwise") and 1e-4 <= p["learning_rate"] <= 1e-3
        assert 0.5 <= p["hard_negative_weight"] <= 8.0 and p["hard_negative_schedule"] in ("constant", "linear")
        if p["hard_negative_schedule"] == "linear":
            assert 0.5 <= p["hard_negative_weight_min"] <= 8.0
            assert p["hard_negative_warmup_steps"] in (1, 2)  # 10–90 % of 2 steps
        assert t["feasible"] == (t["floor_accuracy"] >= summary["floor_minimum"])
        assert t["objective"] == (t["relational_accuracy"] if t["feasible"] else t["relational_accuracy"] - 1)
        assert 0 <= t["relational_accuracy"] <= 1
    assert summary["best"]["objective"] == max(t["objective"] for t in trials)
    assert (out / "trials.png").stat().st_size > 1000

    # best.yaml is a plain hnc-clip-train config: it parses and trains, with the best trial's hyper-parameters
    config = yaml.safe_load((out / "best.yaml").read_text())
    best = summary["best"]["params"]
    for knob in search.SCHEDULE_KNOBS:  # the best trial's schedule, not whatever the last trial left on the arguments
        assert config.get(knob, getattr(search.HncTrainingArguments, knob)) == best[knob]
    assert "save_on_sigterm" not in config  # the search's own SIGTERM handling stays out of the training config
    assert config["loss_type"] == best["loss_type"] and config["learning_rate"] == best["learning_rate"]
    assert "n_trials" not in config and config["do_train"] is True
    model_args, data_args, training_args = train_app.parse_args([str(out / "best.yaml")])
    assert training_args.hard_negative_weight == best["hard_negative_weight"]
    assert training_args.max_steps == 2 and data_args.train_file.endswith("train.json")
    results = train_app.main(model_args, data_args, training_args)
    assert results["train_samples"] > 0 and (out / "best" / "model.safetensors").exists()


def test_each_trial_trains_a_fresh_model_with_its_own_loss(world, tmp_path):
    """`model_init` gives every trial a new model: the trainer's logit-scale tap and θ₀ follow it, and the loss is
    the trial's (`HncTrainer.loss_spec` reads `args.loss_type`)."""
    from transformers import CLIPModel

    from hnc_clip.arguments import HncTrainingArguments
    from hnc_clip.trainer import HncTrainer

    args = HncTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", l2_reg_weight=0.1)
    trainer = HncTrainer(model_init=lambda trial=None: CLIPModel.from_pretrained(world["model"]), args=args)
    first = trainer.model
    second = trainer.call_model_init()
    assert second is not first
    second(input_ids=torch.tensor([[2, 3]]), pixel_values=torch.zeros(1, 3, 32, 32))
    tap = trainer._taps[0].value
    tap.backward()
    assert second.logit_scale.grad is not None and first.logit_scale.grad is None
    assert {id(p) for p, _ in trainer._theta0} == {id(p) for p in second.parameters() if p.requires_grad}
    trainer.args.loss_type = "pairwise"
    assert trainer.loss_spec.fn.__name__ == "pairwise_loss"


def test_the_defaults_fit_a_pretrained_clip_on_real_hnc():
    """Caption types that occur in HNC's train/val schema (the validation split's), learning rates a pre-trained CLIP
    is fine-tuned with (CE-CLIP and FSC-CLIP: 5e-6), not the toy world's from-scratch ones."""
    from collections import Counter

    from hnc_clip.data.hnc import iter_hnc_pairs

    from .helpers import TRAIN_SAMPLE

    types = Counter(p["type"] for p in iter_hnc_pairs(str(TRAIN_SAMPLE)))
    defaults = search.SearchArguments()
    assert set(defaults.objective_types) <= set(types) and set(defaults.floor_types) <= set(types)
    assert all(t.startswith("relation") for t in defaults.objective_types)
    lo, hi = defaults.learning_rate_range
    assert 1e-7 <= lo < 5e-6 < hi <= 1e-5


def test_search_can_score_trials_with_the_in_training_objective(world, tmp_path):
    """`--objective_metric` (with `--eval_benchmarks`): each trial scores `eval_objective`, relational accuracy on the
    world's test pairs subject to zero-shot recognition of its objects, the floor measured once on the start."""
    w, out = world["world"], tmp_path / "search"
    argv = flags(world, out)
    argv[argv.index("--n_trials") + 1] = "2"
    argv += [
        "--eval_on_start", "--objective_metric", "rel_accuracy", "--objective_floor_metric",
        "zs_top1", "--objective_floor_margin", "0.05", "--eval_benchmarks",
        f"rel=pairs:{w}/test.json,images={w}/images,types=relation+swap",
        f"zs=zeroshot:{w}/recognition,classnames={w}/recognition/classnames.json",
    ]  # fmt: skip
    summary = search.main(*search.make_parser().parse_args_into_dataclasses(args=argv))
    base = summary["base"]
    assert summary["floor_minimum"] == pytest.approx(base["eval_zs_top1"] - 0.05)
    for t in summary["trials"]:
        assert t["feasible"] == (t["floor_accuracy"] >= summary["floor_minimum"])
        assert t["objective"] == pytest.approx(t["relational_accuracy"] - (0 if t["feasible"] else 1))
    assert summary["best"]["objective"] == max(t["objective"] for t in summary["trials"])


def test_search_arguments_are_checked():
    with pytest.raises(ValueError, match="cannot be searched"):
        search.SearchArguments(loss_types=["dpo"])
    with pytest.raises(ValueError, match="--weight_range"):
        search.SearchArguments(weight_range=[0.0, 1.0])


def test_the_space_ramps_linear_from_a_searched_start_and_draws_no_weight_for_negclip():
    """`linear` starts at a drawn λ (above the end λ it is the demo's decay, 8 → 2); negclip gets no λ at all."""
    import optuna

    space = search.hp_space(search.SearchArguments(loss_types=["pairwise", "negclip"]), max_steps=500)
    decay = space(optuna.trial.FixedTrial({
        "loss_type": "pairwise", "learning_rate": 1e-3, "hard_negative_weight": 2.0,
        "hard_negative_schedule": "linear", "hard_negative_weight_start": 8.0, "hard_negative_warmup_share": 0.4,
    }))  # fmt: skip
    assert decay["hard_negative_weight_min"] == 8.0 and decay["hard_negative_warmup_steps"] == 200
    from hnc_clip.schedules import SCHEDULES

    args = SimpleNamespace(hard_negative_step_size=0.1, hard_negative_step_every=1, **{
        k: v for k, v in decay.items() if k.startswith("hard_negative_") and k != "hard_negative_schedule"})
    assert [SCHEDULES["linear"](t, args) for t in (0, 100, 200, 499)] == pytest.approx([8.0, 5.0, 2.0, 2.0])
    flat = space(optuna.trial.FixedTrial({"loss_type": "negclip", "learning_rate": 1e-3}))
    assert flat == {"loss_type": "negclip", "learning_rate": 1e-3, "hard_negative_weight": 1.0,
                    "hard_negative_schedule": "constant"}
    # the run's own schedule knobs ride along in every trial: nothing of one trial's schedule leaks into the next
    given = {k: 0 for k in search.SCHEDULE_KNOBS}
    constant = {"loss_type": "pairwise", "learning_rate": 1e-3, "hard_negative_weight": 2.0,
                "hard_negative_schedule": "constant"}  # fmt: skip
    flat = search.hp_space(search.SearchArguments(), 500, given)(optuna.trial.FixedTrial(constant))
    assert all(flat[k] == 0 for k in search.SCHEDULE_KNOBS)


def test_sigterm_stops_the_search_and_records_only_complete_trials(world, tmp_path, monkeypatch):
    """SIGTERM in the second trial's training: the search ends at once with 143 (no more trials, none cut short and
    scored as if trained, no best.yaml), trials.jsonl holds the first trial, and the SIGTERM handler is given back;
    a second search into that folder is refused without --overwrite_output_dir."""
    import os
    import signal

    from transformers import TrainerCallback

    from hnc_clip.trainer import HncTrainer

    calls = {"train": 0}

    class TermInSecondTrial(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            calls["train"] += 1

        def on_step_end(self, args, state, control, **kwargs):
            if calls["train"] == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    class Trainer(HncTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(TermInSecondTrial())

    monkeypatch.setattr(search, "HncTrainer", Trainer)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "search"
    assert search.cli(flags(world, out)) == 143
    assert calls["train"] == 2 and signal.getsignal(signal.SIGTERM) is before
    trials = (out / "trials.jsonl").read_text().splitlines()
    assert [json.loads(t)["number"] for t in trials] == [0]
    assert not (out / "best.yaml").exists() and not any(p.name.startswith("checkpoint-") for p in out.iterdir())

    monkeypatch.setattr(search, "HncTrainer", HncTrainer)
    assert search.cli(flags(world, out)) == 1  # another search's trials there: refused, nothing appended
    assert (out / "trials.jsonl").read_text().splitlines() == trials
    assert search.cli([*flags(world, out), "--n_trials", "1", "--overwrite_output_dir"]) == 0
    assert len((out / "trials.jsonl").read_text().splitlines()) == 1 and (out / "best.yaml").exists()


def test_the_search_reads_its_splits_as_training_does(world, tmp_path, monkeypatch):
    """The objective and floor come from --validation_split (a table or Hub dataset's own split, not its training
    one), with --max_skipped_fraction and a table's hard-image pairs, through the training application's
    `prepare_split`."""
    calls = []

    def recording(path, data_args, max_samples, image_processor, **kwargs):
        calls.append((path.rsplit("/", 1)[-1], tuple(data_args.caption_types or ()), kwargs["split"],
                      kwargs["max_skipped_fraction"]))  # fmt: skip
        return prepare_split(path, data_args, max_samples, image_processor, **kwargs)

    from hnc_clip.data import prepare_split

    monkeypatch.setattr(search, "prepare_split", recording)
    out = tmp_path / "search"
    argv = [*flags(world, out), "--n_trials", "1", "--validation_split", "dev", "--max_skipped_fraction", "0.25"]
    assert search.cli(argv) == 0
    assert calls == [("train.json", (), "train", 0.25), ("val.json", ("relation", "swap"), "dev", 0.25),
                     ("val.json", ("object",), "dev", 0.25)]  # fmt: skip
