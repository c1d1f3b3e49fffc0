"""The demo's smoke version: every stage runs through the real recipe, outputs are written, reruns are cached."""

from __future__ import annotations

import json
import os

from hnc_clip.demo import run as demo


def test_quick_demo_runs_and_caches(tmp_path, monkeypatch):
    args = demo.DemoArguments(output_dir=str(tmp_path), quick=True, num_threads=1)
    assert demo.main(args) == 0
    for name in ("report.md", "results.json", "accuracy_by_type.png", "tradeoff.png", "eval/results.json"):
        assert (tmp_path / name).exists(), name
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["roles"]) == {"pre-trained base", "standard fine-tune", "HNC fine-tune"}
    hnc = results["models"][results["roles"]["HNC fine-tune"]]
    assert {"acc_relation", "acc_swap", "acc_attribute", "acc_object", "zeroshot_top1"} <= set(hnc)
    assert [p["weight"] for p in results["tradeoff"]] == [0.0, *sorted({4.0, *args.sweep_weights})]
    report = (tmp_path / "report.md").read_text()
    assert "| HNC fine-tune |" in report and "Targets:" in report

    # A rerun trains nothing: every stage is found in its folder with the same configuration.
    stamps = {p: os.path.getmtime(tmp_path / "models" / p / "model.safetensors") for p in ("base", "ft_clip")}
    trained = []
    monkeypatch.setattr("hnc_clip.scripts.train.main", lambda *a, **k: trained.append(a))
    assert demo.main(demo.DemoArguments(output_dir=str(tmp_path), quick=True, num_threads=1)) == 0
    assert trained == []
    assert stamps == {p: os.path.getmtime(tmp_path / "models" / p / "model.safetensors") for p in stamps}


def test_demo_fails_when_hnc_is_not_better(tmp_path, monkeypatch):
    real = demo.summarise

    def worse(results):
        out = real(results)
        for name, s in out.items():
            if name not in ("base", "ft_clip"):  # every hard-negative fine-tune
                s["acc_relation"] = 0.0
        return out

    monkeypatch.setattr(demo, "summarise", worse)
    args = demo.DemoArguments(output_dir=str(tmp_path), quick=True, num_threads=1)
    args.quick = False  # keep the quick sizes (already applied) but enforce the target
    assert demo.main(args) == 1
