"""Local `evaluate` metric modules, one folder per metric (`<name>/<name>.py`), shaped like the stock
`huggingface/evaluate` metrics: `_info()` declares the input features, `_compute()` takes explicit arguments, and the
docstring carries runnable examples.

They are always loaded by *absolute path* (`load_metric`), so `evaluate.load` never falls through to the Hub.
"""

from __future__ import annotations

import os

METRICS_DIR = os.path.dirname(os.path.abspath(__file__))
METRIC_NAMES = ("caption_selection", "group_score", "retrieval_recall", "zeroshot_accuracy")


def metric_path(name: str) -> str:
    """Absolute path of the folder holding the metric script `name/name.py`."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; local metrics are {METRIC_NAMES}")
    return os.path.join(METRICS_DIR, name)


def load_metric(name: str):
    """`evaluate.load` a local metric by absolute path; kept in memory so parallel runs share no cache files."""
    import evaluate

    return evaluate.load(metric_path(name), keep_in_memory=True)
