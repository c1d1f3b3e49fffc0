"""The demo's smoke version: every stage runs through the real recipe, outputs are written, reruns are cached."""

from __future__ import annotations

import json
import os

import pytest

from hnc_clip.demo import run as demo


def test_quick_demo_runs_and_caches(tmp_path, monkeypatch):
    import statistics

    args = demo.DemoArguments(output_dir=str(tmp_path), quick=True, num_threads=1)
    assert args.finetune_seeds == [0, 1] and args.losses == ["clip", "pairwise"]
    assert demo.main(args) == 0
    for name in ("report.md", "results.json", "accuracy_by_type.png", "tradeoff.png", "eval/base/results.json"):
        assert (tmp_path / name).exists(), name
    results = json.loads((tmp_path / "results.json").read_text())
    plain_role = f"plain captions + rule negatives (`pairwise`; {args.plain_rules})"
    assert results["roles"] == {"pre-trained base": ["base"],
                                "standard fine-tune (`clip`)": ["ft_clip-s0", "ft_clip-s1"],
                                "HNC fine-tune (`pairwise`)": ["ft_pairwise-s0", "ft_pairwise-s1"],
                                plain_role: ["ft_pairwise_plain-s0"]}  # fmt: skip
    # Each role's cells are the statistics of its models' own evaluation (eval/results.json), one model per seed.
    scored = {}  # the evaluation application's own results, one folder per model
    for names in results["roles"].values():
        scored |= {n: json.loads((tmp_path / "eval" / n / "results.json").read_text())[n] for n in names}
    for role, names in results["roles"].items():
        for metric, cell in results["table"][role].items():
            values = [scored[n]["zeroshot"]["top1"] if metric == "zeroshot_top1" else
                      scored[n]["pairwise"]["accuracy_by_type"][metric[4:]] if metric.startswith("acc_") else
                      sum(scored[n]["pairwise"]["accuracy_by_type"][t] for t in ("relation", "swap")) / 2
                      for n in names]  # fmt: skip
            assert cell["values"] == pytest.approx(values, abs=1e-12)
            assert cell["mean"] == statistics.fmean(cell["values"])
            assert cell["std"] == (statistics.stdev(cell["values"]) if len(values) > 1 else 0.0)
    by_seed = results["targets_by_seed"]
    assert set(by_seed) == {"0", "1"}
    assert results["targets"] == {t: all(s[t] for s in by_seed.values()) for t in results["targets"]}
    # Two seeds are two batch orders: the same flags but --seed, and different weights after training.
    from safetensors.torch import load_file

    s0, s1 = (load_file(tmp_path / "models" / f"ft_pairwise-s{s}" / "model.safetensors") for s in (0, 1))
    assert any(not (s0[k] == s1[k]).all() for k in s0)
    seed_flags = [json.loads((tmp_path / "models" / f"ft_pairwise-s{s}" / "demo_stage.json").read_text())["flags"]
                  for s in (0, 1)]  # fmt: skip
    assert [_value(f, "--seed") for f in seed_flags] == ["0", "1"]
    def but_seed(f):
        at = f.index("--seed")
        return [x.replace("-s1", "-s0") for x in f[:at] + f[at + 2 :]]

    assert but_seed(seed_flags[0]) == but_seed(seed_flags[1])
    hnc = results["models"]["ft_pairwise-s0"]
    assert {"acc_relation", "acc_swap", "acc_attribute", "acc_object", "zeroshot_top1"} <= set(hnc)
    # the trade-off runs from the base (α = 0) through the WiSE-FT interpolations to the tuned model (α = 1)
    assert [p["alpha"] for p in results["tradeoff"]] == [0.0, *args.wise_alphas, 1.0]
    assert results["tradeoff"][0]["zeroshot_top1"] == results["models"]["base"]["zeroshot_top1"]
    assert results["tradeoff"][-1]["relational"] == hnc["relational"]
    wise = json.loads((tmp_path / "eval" / "wise" / "results.json").read_text())
    assert f"ft_pairwise-s0@wise{args.wise_alphas[0]:g}" in wise
    assert set(results["targets"]) >= {"HNC relation and swap ≥ 0.95", "HNC object accuracy not below the base"}
    report = (tmp_path / "report.md").read_text()
    assert "| HNC fine-tune (`pairwise`) | " in report and " ± " in report and "Targets, met by every" in report
    assert f"| {plain_role} |" in report and "Plain-caption variant" in report
    rows = {line.split(" | ")[0][2:]: line for line in report.splitlines() if line.startswith("| ")}
    assert " ± " in rows["HNC fine-tune (`pairwise`)"] and " ± " not in rows[plain_role]  # 2 seeds vs one run

    # Every fine-tune saw the same batches: the same flags but the loss (and λ's, for the losses that have one).
    flags = {loss: json.loads((tmp_path / "models" / f"ft_{loss}-s0" / "demo_stage.json").read_text())["flags"]
             for loss in args.losses}  # fmt: skip
    lambda_flags = ("--hard_negative_schedule", "--hard_negative_weight_min", "--hard_negative_weight",
                    "--hard_negative_warmup_steps")  # fmt: skip

    def batches(f):
        drop = {f.index(flag) for flag in ("--loss_type", "--output_dir", *lambda_flags) if flag in f}
        return tuple(x for k, x in enumerate(f) if k not in drop and k - 1 not in drop)

    assert len({batches(f) for f in flags.values()}) == 1
    assert "--hard_negative_weight" not in flags["clip"] and "--hard_negative_weight" in flags["pairwise"]
    assert batches(demo.finetune_flags(args, "negclip")) == batches(demo.finetune_flags(args, "clip"))  # no λ either
    check_plain_variant(tmp_path, args, flags["pairwise"])

    # A rerun trains nothing: every stage is found in its folder with the same configuration.
    stamps = {p: os.path.getmtime(tmp_path / "models" / p / "model.safetensors") for p in ("base", "ft_clip-s1")}
    trained = []
    monkeypatch.setattr("hnc_clip.scripts.train.main", lambda *a, **k: trained.append(a))
    assert demo.main(demo.DemoArguments(output_dir=str(tmp_path), quick=True, num_threads=1)) == 0
    assert trained == []
    assert stamps == {p: os.path.getmtime(tmp_path / "models" / p / "model.safetensors") for p in stamps}


def _value(flags: list[str], name: str) -> str:
    return flags[flags.index(name) + 1]


def check_plain_variant(out, args, hnc_flags: list[str]) -> None:
    """The plain-caption run: HNC's flags but its data and --caption_types, the same positives and images in the
    same order (so the same sampler seed gives the same batches), and negatives made and counted by rule."""
    from hnc_clip.data.pairs import build_split
    from hnc_clip.negatives.rules import parse_rules
    from hnc_clip.scripts.train import parse_args

    plain = json.loads((out / "models" / "ft_pairwise_plain-s0" / "demo_stage.json").read_text())["flags"]
    data = ("--train_file", "--image_column", "--caption_column", "--negatives_from_captions", "--caption_parser",
            "--negative_vocabulary", "--caption_types", "--output_dir")  # fmt: skip

    def rest(f):
        drop = {k for k, x in enumerate(f) if x in data}
        drop |= {k + 1 for k in drop} | ({k + 2 for k in drop if f[k] == "--caption_types"})
        return [x for k, x in enumerate(f) if k not in drop]

    assert rest(plain) == rest(hnc_flags)
    assert _value(plain, "--negatives_from_captions") == args.plain_rules

    def split(run_flags):  # the training application's own parse of the run's flags, then its data step
        _, data_args, _ = parse_args(run_flags)
        return build_split(data_args.train_file, data_args, None, cache_dir=str(out / "cache_check"))

    hnc, table = split(hnc_flags), split(plain)
    assert len(table) == len(hnc) > 0
    assert table["image_file"] == hnc["image_file"] and table["positive"] == hnc["positive"]
    assert all(not n for n in table["negatives"])  # no HNC negative came along
    logged = json.loads((out / "models" / "ft_pairwise_plain-s0" / "trainer_state.json").read_text())["log_history"]
    made = {k: sum(e.get(k, 0) for e in logged) for k in logged[0] if k.startswith("negatives/")}
    rules = parse_rules(args.plain_rules)
    assert all(made[f"negatives/{r}"] > 0 for r in rules), made
    assert made["negatives/no_rule_applied"] == 0  # every positive of the world has a relation to swap and replace


def test_demo_fails_when_hnc_is_not_better_on_one_seed(tmp_path, monkeypatch, caplog):
    """One fine-tune seed whose hard-negative model is not better than its standard one fails the demo."""
    real = demo.summarise

    def worse(results):
        out = real(results)
        for name, s in out.items():
            s["acc_relation"] = 0.0 if name == "ft_pairwise-s1" else 0.5 if name.startswith("ft_clip") else 0.9
        return out

    monkeypatch.setattr(demo, "summarise", worse)
    args = demo.DemoArguments(output_dir=str(tmp_path), quick=True, num_threads=1)
    args.quick = False  # keep the quick sizes (already applied) but enforce the target
    assert demo.main(args) == 1
    assert "NOT better than the standard one on relation negatives (fine-tune seeds 1)" in caplog.text


def test_seeds_report_mean_and_spread(tmp_path, monkeypatch):
    """`--seeds`: the demo once per seed in its own folder, then per model and metric the mean, standard deviation,
    min and max of the seeds' numbers (checked against the per-seed results.json files)."""
    import statistics

    args = demo.DemoArguments(output_dir=str(tmp_path), quick=True, num_threads=1, seeds=[0, 1])
    assert demo.main(args) == 0
    agg = json.loads((tmp_path / "results_seeds.json").read_text())
    per_seed = [json.loads((tmp_path / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)]
    assert [(r["config"]["seed"], r["config"]["finetune_seeds"]) for r in per_seed] == [(0, [0]), (1, [1])]
    for role in per_seed[0]["roles"]:
        values = [r["models"][r["roles"][role][0]]["relational"] for r in per_seed]
        cell = agg["models"][role]["relational"]
        assert cell["values"] == values
        assert cell["mean"] == statistics.fmean(values) and cell["std"] == statistics.stdev(values)
    assert "± " in (tmp_path / "report_seeds.md").read_text()


def test_a_demo_loss_with_settings_trains_its_loss_type_with_them():
    """`--losses fsc_clip_local`: FSC-CLIP with its local term, on the same batches as `fsc_clip` (the flags differ
    by the term's weight only); a name that is neither a loss type nor such a setting is refused."""
    args = demo.DemoArguments(output_dir="unused", losses=["clip", "pairwise", "fsc_clip", "fsc_clip_local"])
    local, plain = demo.finetune_flags(args, "fsc_clip_local"), demo.finetune_flags(args, "fsc_clip")
    assert _value(local, "--loss_type") == "fsc_clip" and _value(local, "--fsc_local_weight") == "0.2"
    without = [x for k, x in enumerate(local) if "--fsc_local_weight" not in local[max(0, k - 1) : k + 1]]
    assert without == plain
    with pytest.raises(ValueError, match="--losses fsc_local: not a loss type"):
        demo.DemoArguments(output_dir="unused", losses=["clip", "pairwise", "fsc_local"])


def test_the_report_names_the_flags_that_differ_from_the_defaults(tmp_path):
    """A report's command reruns that report: non-default losses and rules are in it, defaults are not."""
    args = demo.DemoArguments(output_dir=str(tmp_path), losses=["clip", "pairwise", "fsc_clip_local"], plain_rules="")
    assert demo._non_default_flags(args) == " --losses clip pairwise fsc_clip_local --plain_rules ''"
    assert demo._non_default_flags(demo.DemoArguments(output_dir=str(tmp_path))) == ""


def test_fine_tune_seeds_must_be_distinct_and_the_plain_variant_train():
    """Two equal seeds would train two runs into one folder at once; `--plain_seeds 0` would drop the variant that
    `--plain_rules` asks for (an empty `--plain_rules` is how to drop it)."""
    with pytest.raises(ValueError, match="distinct seeds"):
        demo.DemoArguments(output_dir="unused", finetune_seeds=[0, 0])
    with pytest.raises(ValueError, match="--plain_seeds ≥ 1"):
        demo.DemoArguments(output_dir="unused", plain_seeds=0)
    with pytest.raises(ValueError, match="distinct seeds"):
        demo.DemoArguments(output_dir="unused", finetune_seeds=[])
