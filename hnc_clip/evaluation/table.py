"""The papers' table: one row per model (base, tuned, WiSE-FT alphas, baselines), one column per benchmark's headline
number, then the compositionality, zero-shot and retrieval averages. Written as Markdown, CSV, JSON and a PNG.

Cells are the `headline` of each benchmark's results (its official number, see the registry) in percent; the
averages are unweighted means over the benchmarks of that suite that the model was evaluated on. The per-type tables
(`by_type`) go to `benchmarks_by_type.md` beside it.
"""

from __future__ import annotations

import csv
import json
import math
import os

SUITE_AVERAGES = (("compositionality", "comp. avg"), ("zeroshot", "zero-shot avg"), ("retrieval", "retrieval avg"))


def benchmark_table(results: dict, suites: dict[str, str]) -> tuple[list[str], list[dict]]:
    """(columns, rows): `results` = {model: {"benchmarks": {name: {"headline": ...}}}}, `suites` = {name: suite}."""
    names = list(dict.fromkeys(n for r in results.values() for n in r.get("benchmarks", {})))
    averages = [(suite, label) for suite, label in SUITE_AVERAGES if any(suites.get(n) == suite for n in names)]
    columns = ["model", *names, *(label for _, label in averages)]
    rows = []
    for model, r in results.items():
        bench = r.get("benchmarks", {})
        row = {"model": model}
        for n in names:
            row[n] = 100 * bench[n]["headline"] if n in bench else None
        for suite, label in averages:
            values = [row[n] for n in names if suites.get(n) == suite and row[n] is not None]
            values = [v for v in values if not math.isnan(v)]
            row[label] = sum(values) / len(values) if values else None
        rows.append(row)
    return columns, rows


def _fmt(value) -> str:
    if value is None:
        return "–"
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.1f}"


def table_markdown(columns: list[str], rows: list[dict], headlines: dict[str, str] | None = None) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|---" + "|---:" * (len(columns) - 1) + "|"]
    lines += ["| " + " | ".join([row["model"], *(_fmt(row[c]) for c in columns[1:])]) + " |" for row in rows]
    if headlines:
        lines += ["", "Cells: " + "; ".join(f"`{n}` {h}" for n, h in headlines.items()) + " (percent)."]
    return "\n".join(lines) + "\n"


def by_type_markdown(results: dict) -> str:
    """Per benchmark, the raw per-type table (rows = types, columns = models) and the skip counts."""
    out = ["# Per-type results", ""]
    names = list(dict.fromkeys(n for r in results.values() for n in r.get("benchmarks", {})))
    for n in names:
        models = [m for m, r in results.items() if n in r.get("benchmarks", {})]
        types = list(dict.fromkeys(t for m in models for t in results[m]["benchmarks"][n].get("by_type", {})))
        out += [f"## {n}", "", "| type | n | " + " | ".join(models) + " |", "|---|---:" + "|---:" * len(models) + "|"]
        for t in types:
            counts_t = results[models[0]]["benchmarks"][n].get("count_by_type", {})
            count = counts_t.get(t, counts_t.get(t.split("/", 1)[-1]))
            cells = [_fmt(100 * results[m]["benchmarks"][n]["by_type"].get(t, math.nan)) for m in models]
            out.append(f"| {t} | {count if count is not None else ''} | " + " | ".join(cells) + " |")
        first = results[models[0]]["benchmarks"][n]
        counts = {k: first[k] for k in first if k.startswith(("num_", "missing", "unreadable", "identical", "items_"))}
        out += ["", "Counts (first model): " + ", ".join(f"{k}={v}" for k, v in counts.items()), ""]
    return "\n".join(out)


def plot_table(columns: list[str], rows: list[dict], path: str) -> str:
    """A heat map of the table (models x benchmarks, percent), values written in the cells."""
    import matplotlib.pyplot as plt
    import numpy as np

    from .plots import save_figure  # chooses the Agg backend before pyplot draws

    cols = columns[1:]
    values = np.array([[np.nan if r[c] is None else r[c] for c in cols] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cols) + 2), max(2.5, 0.5 * len(rows) + 1.5)))
    ax.imshow(np.nan_to_num(values, nan=0.0), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, _fmt(values[i, j]), ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [r["model"] for r in rows])
    ax.set_title("Benchmarks (headline numbers, %)")
    return save_figure(fig, path)


def write_benchmark_table(results: dict, suites: dict[str, str], headlines: dict[str, str], output_dir: str) -> dict:
    """`benchmarks.{md,csv,json,png}` and `benchmarks_by_type.md` in `output_dir`; returns their paths."""
    columns, rows = benchmark_table(results, suites)
    paths = {ext: os.path.join(output_dir, f"benchmarks.{ext}") for ext in ("md", "csv", "json", "png")}
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write("# Benchmarks\n\n" + table_markdown(columns, rows, headlines))
    with open(paths["csv"], "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({"columns": columns, "rows": rows, "headlines": headlines}, f, indent=2)
    plot_table(columns, rows, paths["png"])
    paths["by_type"] = os.path.join(output_dir, "benchmarks_by_type.md")
    with open(paths["by_type"], "w", encoding="utf-8") as f:
        f.write(by_type_markdown(results))
    return paths
