"""PNG plots of evaluation results (matplotlib, Agg backend: no display needed on servers and in CI)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402


def plot_accuracy_by_type(results: Mapping[str, dict], path: str) -> str | None:
    """Grouped bars: one group per caption type, one bar per model (pairwise `accuracy_by_type`)."""
    per_model = {m: r["pairwise"]["accuracy_by_type"] for m, r in results.items() if "pairwise" in r}
    if not per_model:
        return None
    types = sorted({t for acc in per_model.values() for t in acc})
    x = np.arange(len(types))
    bar = 0.8 / len(per_model)
    width_in = min(24.0, max(6.0, 0.35 * len(types) * max(1.0, len(per_model) / 2)))
    fig, ax = plt.subplots(figsize=(width_in, 4.5))
    for i, (model, acc) in enumerate(per_model.items()):
        ax.bar(x + (i - (len(per_model) - 1) / 2) * bar, [acc.get(t, np.nan) for t in types], bar, label=model)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(x, types, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (positive > hard negative)")
    ax.set_title("Pairwise accuracy by caption type")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_similarity_histograms(scores: Mapping[str, object], path: str, bins: int = 40) -> str | None:
    """Per model, histograms of sim(image, positive), sim(image, hard negative) and sim(image, random negative).

    `scores` maps model name -> `hnc_clip.evaluation.tasks.PairwiseScores`; all panels share one bin range so they
    compare.
    """
    if not scores:
        return None
    arrays = [a for s in scores.values() for a in (s.positive, s.negative, s.random_negative) if a is not None]
    lo, hi = float(min(a.min() for a in arrays)), float(max(a.max() for a in arrays))
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    cols = min(3, len(scores))
    rows = math.ceil(len(scores) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (model, s) in zip(axes.flat, scores.items()):
        ax.hist(s.positive, bins=edges, alpha=0.55, label="positive")
        ax.hist(s.negative, bins=edges, alpha=0.55, label="hard negative")
        if s.random_negative is not None:
            ax.hist(s.random_negative, bins=edges, alpha=0.35, label="random negative", histtype="stepfilled")
        ax.set_title(model, fontsize="medium")
        ax.set_xlabel("cosine similarity")
    for ax in list(axes.flat)[len(scores) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.suptitle("Image-caption similarities")
    return save_figure(fig, path)


def plot_wise_tradeoff(curves: Mapping[str, Sequence[dict]], path: str) -> str | None:
    """WiSE-FT curves, one per tuned model; points are dicts with `alpha`, `relational`, `recognition`.

    With both numbers (pairwise accuracy and zero-shot top-1): recognition on x, relational on y, each point labelled
    with its alpha — the trade-off plot of Wortsman et al. (2022). With only one of them: that number against alpha.
    """
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    both = all(
        p.get("relational") is not None and p.get("recognition") is not None for c in curves.values() for p in c
    )
    for tuned, points in curves.items():
        points = sorted(points, key=lambda p: p["alpha"])
        if both:
            xs, ys = [p["recognition"] for p in points], [p["relational"] for p in points]
            ax.plot(xs, ys, marker="o", label=tuned)
            for p, xv, yv in zip(points, xs, ys):
                ax.annotate(f"α={p['alpha']:g}", (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
        else:
            key = "relational" if points[0].get("relational") is not None else "recognition"
            ax.plot([p["alpha"] for p in points], [p[key] for p in points], marker="o", label=f"{tuned} ({key})")
    if both:
        ax.set_xlabel("recognition: zero-shot top-1")
        ax.set_ylabel("relational: pairwise accuracy")
    else:
        ax.set_xlabel("α (0 = base, 1 = fine-tuned)")
        ax.set_ylabel("accuracy")
    ax.set_title("WiSE-FT interpolation")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def save_figure(fig, path: str) -> str:
    """Lay out, write as a 110-dpi PNG (its folder made) and close: every plot of the project ends here."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
