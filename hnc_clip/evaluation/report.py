"""Writing results: `results.json` (nested, machine-readable) and `results.md` (models side by side).

Layout of `results.json` — one entry per model, one sub-dict per task, so tasks never collide on key names:

    {"<model name>": {"pairwise": {"accuracy": ..., "accuracy_by_type": {...}, ...},
                      "retrieval": {"image_to_text_R@1": ..., "text_to_image_R@1": ..., ...},
                      "zeroshot": {"top1": ..., "top5": ..., "mean_per_class_recall": ...}}}

Model names are the checkpoint folder names (or Hub ids), WiSE-FT interpolations `<tuned>@wise<alpha>`.
"""

from __future__ import annotations

import json
import math
import os

# Shown first in the markdown tables, in this order; every other scalar follows alphabetically.
HEADLINE_METRICS = {
    "pairwise": (
        "accuracy",
        "macro_accuracy",
        "ratio_accuracy@1.00",
        "ratio_accuracy@1.05",
        "ratio_accuracy@1.10",
        "random_negative_accuracy",
        "mean_positive_similarity",
        "mean_negative_similarity",
        "mean_random_negative_similarity",
        "mean_margin",
    ),
    "retrieval": tuple(f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)),
    "zeroshot": ("top1", "top5", "mean_per_class_recall"),
}
# Per-type counts are the same for every model and only bloat the table; they stay in results.json.
_TABLE_SKIP = ("count_by_type",)


def write_results_json(results: dict, output_dir: str) -> str:
    path = os.path.join(output_dir, "results.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


def _flatten(task_results: dict) -> dict:
    """`{"accuracy_by_type": {"relation": 0.5}}` -> `{"accuracy_by_type/relation": 0.5}` (one level is all we have)."""
    flat = {}
    for key, value in task_results.items():
        if key in _TABLE_SKIP:
            continue
        if isinstance(value, dict):
            flat.update({f"{key}/{sub}": v for sub, v in value.items()})
        else:
            flat[key] = value
    return flat


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def results_markdown(results: dict) -> str:
    """One table per task: a row per metric, a column per model (so checkpoints read side by side)."""
    models = list(results)
    tasks = list(dict.fromkeys(task for model in models for task in results[model]))
    lines = ["# Evaluation results", ""]
    for task in tasks:
        flat = {model: _flatten(results[model].get(task, {})) for model in models}
        present = [m for m in models if flat[m]]
        keys = list(dict.fromkeys(k for m in present for k in flat[m]))
        headline = [k for k in HEADLINE_METRICS.get(task, ()) if k in keys]
        ordered = headline + sorted(k for k in keys if k not in headline)
        lines += [f"## {task}", "", "| metric | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
        lines += [f"| {k} | " + " | ".join(_cell(flat[m].get(k)) for m in present) + " |" for k in ordered]
        lines.append("")
    return "\n".join(lines)


def write_results_markdown(results: dict, output_dir: str) -> str:
    path = os.path.join(output_dir, "results.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(results_markdown(results))
    return path
