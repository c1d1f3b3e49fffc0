"""The local `evaluate` metric modules: their doctests, and values on hand-computed cases."""

from __future__ import annotations

import doctest
import importlib.util
import os

import pytest

from hnc_clip.evaluation.metrics import METRIC_NAMES, load_metric, metric_path


def _import_script(name: str):
    path = os.path.join(metric_path(name), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_eval_metric_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_metric_doctests(name):
    # The same examples `pytest --doctest-modules hnc_clip/evaluation/metrics` runs; here in the normal suite too.
    result = doctest.testmod(_import_script(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_metric_loads_by_absolute_path(name):
    metric = load_metric(name)
    assert metric.name == name
    assert os.path.isabs(metric_path(name))


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="local metrics are"):
        metric_path("accuracy")


def test_caption_selection_continuity_values():
    metric = load_metric("caption_selection")
    out = metric.compute(
        true_scores=[0.8, 0.8, 1.0, 1.0, 0.8],
        best_other_scores=[0.6, 1.0, 0.96, 0.8, 0.28],
        types=["rel", "rel", "att", "att", "rel"],
        random_scores=[0.0, 0.0, 0.6, 0.6, 0.0],
        thresholds=[1.0, 1.05],
    )
    assert out["accuracy"] == pytest.approx(0.8)
    assert out["accuracy_by_type"] == pytest.approx({"att": 1.0, "rel": 2 / 3})
    assert out["macro_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert out["count_by_type"] == {"att": 2, "rel": 3}
    assert out["ratio_accuracy@1.00"] == pytest.approx(0.8)
    assert out["ratio_accuracy@1.05"] == pytest.approx(0.6)  # 1.0 / 0.96 = 1.042 and 0.8 / 1.0 fail
    assert out["mean_positive_similarity"] == pytest.approx(0.88)
    assert out["mean_negative_similarity"] == pytest.approx(0.728)
    assert out["mean_margin"] == pytest.approx(0.152)
    assert out["mean_random_negative_similarity"] == pytest.approx(0.24)
    assert out["random_negative_accuracy"] == pytest.approx(1.0)
    assert out["num_items"] == 5


def test_caption_selection_without_thresholds_has_no_continuity_keys():
    out = load_metric("caption_selection").compute(true_scores=[0.3, 0.2], best_other_scores=[0.1, 0.25])
    assert set(out) == {"accuracy", "macro_accuracy", "accuracy_by_type", "count_by_type", "num_items", "num_ties"}
    with pytest.raises(ValueError, match="1 random scores for 2 items"):
        load_metric("caption_selection").compute(true_scores=[0.3, 0.2], best_other_scores=[0.1, 0.25],
                                                 random_scores=[0.0])  # fmt: skip


def test_caption_selection_tie_is_wrong_and_negative_sims_stay_defined():
    out = load_metric("caption_selection").compute(
        true_scores=[0.2, 0.1], best_other_scores=[0.2, -0.1], thresholds=[1.1]
    )
    assert out["accuracy"] == 0.5  # the tie counts as wrong
    assert out["ratio_accuracy@1.10"] == 0.5  # 0.1 > 1.1 * -0.1 holds although the ratio is negative


def test_metrics_refuse_empty_input():
    with pytest.raises(ValueError, match="no items"):
        load_metric("caption_selection").compute(true_scores=[], best_other_scores=[])


def test_retrieval_recall_counts_any_relevant_item():
    out = load_metric("retrieval_recall").compute(
        predictions=[[5, 1, 0], [2, 3, 4], [9, 8, 7]], references=[[0, 1], [3], [1]], k_values=[1, 2, 3]
    )
    assert out == {"R@1": 0.0, "R@2": pytest.approx(2 / 3), "R@3": pytest.approx(2 / 3), "num_queries": 3}


def test_zeroshot_accuracy_with_fewer_classes_than_k():
    out = load_metric("zeroshot_accuracy").compute(predictions=[[1, 0], [1, 0], [0, 1]], references=[0, 1, 0])
    assert out["top1"] == pytest.approx(2 / 3)
    assert out["top5"] == 1.0
    assert out["mean_per_class_recall"] == pytest.approx((0.5 + 1.0) / 2)
