"""The demo's report: per-role statistics over seeds, the markdown tables and the plots beside them."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence


def spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min, max and the values themselves."""
    values = list(values)
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}  # fmt: skip


def role_table(models: Mapping[str, dict], roles: Mapping[str, Sequence[str]], metrics: Sequence[str]) -> dict:
    """role -> metric -> `spread` over the role's models (one per seed)."""
    return {role: {m: spread([models[n][m] for n in names]) for m in metrics} for role, names in roles.items()}


def cell(s: dict) -> str:
    """`mean ± sd (min–max)` over seeds; a lone value as it is (the base: one per world)."""
    if len(s["values"]) == 1:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} ± {s['std']:.3f} ({s['min']:.3f}–{s['max']:.3f})"


def markdown_table(table: Mapping[str, Mapping[str, dict]], metrics: Sequence[str]) -> list[str]:
    heads = [m[4:] if m.startswith("acc_") else "zero-shot top-1" if m == "zeroshot_top1" else m for m in metrics]
    lines = ["| model | " + " | ".join(heads) + " |", "|" + "---|" * (len(heads) + 1)]
    lines += ["| " + " | ".join([role, *[cell(row[m]) for m in metrics]]) + " |" for role, row in table.items()]
    return lines


def plot_by_type(table: Mapping[str, Mapping[str, dict]], types: Sequence[str], path: str) -> str:
    """Grouped bars of the mean accuracy per negative type and role, the standard deviation as an error bar and
    each seed's value as a dot (so two seeds that disagree show as two dots, not one short bar)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from hnc_clip.evaluation.plots import save_figure  # chooses the Agg backend before pyplot draws

    x = np.arange(len(types))
    width = 0.8 / len(table)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(types) * max(1.0, len(table) / 3)), 5.5))
    for i, (role, row) in enumerate(table.items()):
        at = x + (i - (len(table) - 1) / 2) * width
        means = [row[t]["mean"] for t in types]
        ax.bar(at, means, width, yerr=[row[t]["std"] for t in types], capsize=2, label=role)
        for j, t in enumerate(types):
            values = row[t]["values"]
            ax.scatter([at[j]] * len(values), values, s=6, color="black", zorder=3)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(x, [t[4:] for t in types])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (positive > hard negative)")
    ax.set_title("Pairwise accuracy by negative type (bars: mean over seeds; dots: each seed)")
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    return save_figure(fig, path)


def plot_tradeoff(points: list[dict], path: str, base: dict | None = None) -> str:
    """Relational accuracy vs object recognition along the WiSE-FT path from the base (α = 0) to the tuned model."""
    import matplotlib.pyplot as plt

    from hnc_clip.evaluation.plots import save_figure  # chooses the Agg backend before pyplot draws

    points = sorted(points, key=lambda p: p["alpha"])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs, ys = [p["zeroshot_top1"] for p in points], [p["relational"] for p in points]
    ax.plot(xs, ys, marker="o", label="(1-α)·base + α·tuned")
    for p, x, y in zip(points, xs, ys):
        ax.annotate(f"α={p['alpha']:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=9)
    if base is not None:
        ax.scatter([base["zeroshot_top1"]], [base["relational"]], marker="s", color="grey", label="pre-trained base")
    ax.set_xlabel("object recognition: zero-shot top-1")
    ax.set_ylabel("relational: pairwise accuracy (relation + swap)")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_title("WiSE-FT: relations vs recognition")
    ax.legend(fontsize="small")
    return save_figure(fig, path)
