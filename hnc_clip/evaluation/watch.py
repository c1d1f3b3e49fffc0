"""Benchmarks scored while training, and the objective that picks the checkpoint.

`--eval_benchmarks NAME=KIND:PATH[,option=value...]` names what each evaluation of the Trainer also scores (its
`--eval_strategy`/`--eval_steps`, so every N steps, and `--eval_on_start` for the starting model):

    zeroshot:FOLDER      zero-shot classification on an image folder (one sub-folder per class, `datasets`'
                         imagefolder layout); options `classnames=FILE`, `templates=FILE` (as `hnc-clip-eval`),
                         `split=NAME`                                   → `eval_NAME_top1`, `eval_NAME_top5`
    hub:DATASET          the same on a `datasets` set (a Hub id, or a folder of data files) with an image and a
                         class-label column: `split=`, `config=`, `image=COLUMN` (image), `label=COLUMN` (label),
                         `classnames=`, `templates=`; class names default to the label column's names
    pairs:FILE           positive vs hard negative on a pair file (HNC train/val/test, SugarCrepe subset, ARO,
                         Structure-CLIP; detected), `images=FOLDER` required, `types=a+b` keeps those caption types
                                                                        → `eval_NAME_accuracy`, per type
    every kind           `max=N`: a fixed random subset of N items (seeded, the same at every evaluation)

Each also logs `eval_NAME_seconds` (its cost) and `eval_NAME_items`. The numbers go where the Trainer's evaluation
goes: the reporters (wandb, TensorBoard) and `trainer_state.json`'s log history.

`Objective`: the relational score a checkpoint is chosen for, subject to a recognition floor — `--objective_metric`
(e.g. `relational_accuracy`), `--objective_floor_metric` (e.g. `recognition_top1`), which may fall at most
`--objective_floor_margin` below the starting model's value (measured by the `--eval_on_start` evaluation and kept
in `objective_floor.json` for a resumed run). `eval_objective` is the relational score when the floor holds, and
that score − 1 when it does not (below any feasible one), as `hnc-clip-search` scores its trials; with
`--metric_for_best_model objective --load_best_model_at_end` the Trainer keeps the checkpoint the goal wants.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass

from ..modeling import unwrap_clip
from .encode import CachedEncoder, ClipEncoder
from .images import ImageRef
from .tasks import DatasetColumn, score_pairwise, score_zeroshot

logger = logging.getLogger(__name__)

KINDS = ("zeroshot", "hub", "pairs")
OPTIONS = {
    "zeroshot": {"max", "classnames", "templates", "split"},
    "hub": {"max", "classnames", "templates", "split", "config", "image", "label"},
    "pairs": {"max", "images", "types"},
}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
FLOOR_FILE = "objective_floor.json"


class WatchSpecError(ValueError):
    """An `--eval_benchmarks` entry that cannot be read (the message names the entry and the expected form)."""


@dataclass(frozen=True)
class WatchSpec:
    name: str
    kind: str  # one of KINDS
    path: str
    max_items: int | None = None
    images: str | None = None  # pairs: the image folder
    types: tuple[str, ...] | None = None  # pairs: caption types kept
    classnames: str | None = None  # zeroshot, hub
    templates: str | None = None
    split: str | None = None
    config: str | None = None  # hub: the dataset's configuration, its image and label columns
    image_column: str = "image"
    label_column: str = "label"


def parse_watch(spec: str) -> WatchSpec:
    """`NAME=KIND:PATH[,key=value...]` → `WatchSpec`, or `WatchSpecError` naming the entry and what is wrong."""
    form = (f"--eval_benchmarks {spec!r}: expected NAME=KIND:PATH[,key=value...] with KIND one of {list(KINDS)} "
            "(e.g. recognition=zeroshot:world/recognition or relational=pairs:test.json,images=img,types=relation)")
    name, sep, rest = spec.partition("=")
    kind, colon, tail = rest.partition(":")
    if not sep or not _NAME.fullmatch(name) or kind not in KINDS or not colon or not tail:
        raise WatchSpecError(form)
    path, *options = tail.split(",")
    values: dict = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or key not in OPTIONS[kind] or not value:
            raise WatchSpecError(f"{form}; {kind} takes options {sorted(OPTIONS[kind])}, got {option!r}")
        values[key] = value
    max_items = None
    if "max" in values:
        if not values["max"].isdigit() or int(values["max"]) < 1:
            raise WatchSpecError(f"--eval_benchmarks {spec!r}: max must be a whole number >= 1, got {values['max']}")
        max_items = int(values["max"])
    if kind == "pairs" and "images" not in values:
        raise WatchSpecError(f"--eval_benchmarks {spec!r}: pairs needs images=FOLDER (where the pairs' images are)")
    types = tuple(values["types"].split("+")) if "types" in values else None
    return WatchSpec(name, kind, path, max_items, values.get("images"), types, values.get("classnames"),
                     values.get("templates"), values.get("split"), values.get("config"), values.get("image", "image"),
                     values.get("label", "label"))  # fmt: skip


def parse_watches(specs: list[str] | None) -> list[WatchSpec]:
    out = [parse_watch(s) for s in specs or []]
    names = [w.name for w in out]
    if len(set(names)) != len(names):
        raise WatchSpecError(f"--eval_benchmarks: each NAME once, got {names}")
    return out


def _subset(n: int, k: int | None, seed: int) -> list[int] | None:
    """Sorted indices of a seeded random subset of k of n items (None: all)."""
    if k is None or k >= n:
        return None
    return sorted(random.Random(seed).sample(range(n), k))


class Watched:
    """One benchmark, read once (its subset fixed), scored on the current model by `score(encoder)`."""

    def __init__(self, spec: WatchSpec, seed: int = 0, cache_dir: str | None = None):
        self.spec = spec
        if spec.kind == "zeroshot":
            import datasets

            from .zeroshot_data import load_imagefolder, read_classnames, read_templates

            dataset = load_imagefolder(spec.path, spec.split, cache_dir)
            keep = _subset(len(dataset), spec.max_items, seed)
            if keep is not None:
                dataset = dataset.select(keep)
            self.classnames = read_classnames(spec.classnames, dataset.features["label"].names)
            self.templates = read_templates(spec.templates)
            # the files, not decoded images: the encoder decodes them in its workers, and caches by reference
            files = dataset.cast_column("image", datasets.Image(decode=False))["image"]
            self.images = [ImageRef(f["path"]) for f in files]
            self.labels = [int(x) for x in dataset["label"]]
            self.items = len(dataset)
        elif spec.kind == "hub":
            self._load_hub(spec, seed, cache_dir)
        else:
            from .formats import load_pairs

            skips: Counter = Counter()
            pairs = load_pairs(spec.path, skips=skips)
            if spec.types is not None:
                found = sorted({str(p["type"]) for p in pairs})
                pairs = [p for p in pairs if str(p["type"]) in spec.types]
                if not pairs:
                    raise WatchSpecError(f"--eval_benchmarks {spec.name}: no pair of types {list(spec.types)} in "
                                         f"{spec.path} (its types: {found})")  # fmt: skip
            keep = _subset(len(pairs), spec.max_items, seed)
            self.pairs = pairs if keep is None else [pairs[i] for i in keep]
            self.items = len(self.pairs)
            if skips:
                logger.warning("--eval_benchmarks %s: records skipped while reading %s: %s", spec.name, spec.path,
                               dict(skips))  # fmt: skip

    def _load_hub(self, spec: WatchSpec, seed: int, cache_dir: str | None) -> None:
        import datasets

        from .zeroshot_data import _SPLIT_PREFERENCE, read_classnames, read_templates

        loaded = datasets.load_dataset(spec.path, spec.config, cache_dir=cache_dir)
        split = spec.split or next((s for s in _SPLIT_PREFERENCE if s in loaded), next(iter(loaded)))
        if split not in loaded:
            raise WatchSpecError(f"--eval_benchmarks {spec.name}: no split {split!r} in {spec.path} "
                                 f"(splits: {list(loaded)})")  # fmt: skip
        dataset = loaded[split]
        for role, column in (("image", spec.image_column), ("label", spec.label_column)):
            if column not in dataset.column_names:
                raise WatchSpecError(f"--eval_benchmarks {spec.name}: no {role} column {column!r} in {spec.path} "
                                     f"(columns: {dataset.column_names}; name it with {role}=COLUMN)")  # fmt: skip
        keep = _subset(len(dataset), spec.max_items, seed)
        if keep is not None:
            dataset = dataset.select(keep)
        names = getattr(dataset.features[spec.label_column], "names", None)
        if names is None and spec.classnames is None:
            raise WatchSpecError(f"--eval_benchmarks {spec.name}: {spec.label_column!r} is not a class-label column "
                                 "with names: give classnames=FILE")  # fmt: skip
        self.labels = [int(x) for x in dataset[spec.label_column]]
        # without names, the file must hold one per class id 0..max
        self.classnames = read_classnames(spec.classnames, names or [str(i) for i in range(max(self.labels) + 1)])
        self.templates = read_templates(spec.templates)
        self.images = DatasetColumn(dataset, spec.image_column)  # decoded one batch at a time by the encoder
        self.items = len(dataset)

    def score(self, encoder, plain=None) -> dict[str, float]:
        """This benchmark's numbers for the encoder's model, keys prefixed with its name. `plain`: the encoder
        without the cache, for decoded images (a Hub set's), which cannot key it."""
        name, start = self.spec.name, time.perf_counter()
        if self.spec.kind in ("zeroshot", "hub"):
            user = plain if self.spec.kind == "hub" and plain is not None else encoder
            out = score_zeroshot(user, self.images, self.labels, self.classnames, self.templates)
            values = {k: out[k] for k in ("top1", "top5", "mean_per_class_recall") if k in out}
            values["unreadable_images"] = out["unreadable_images"]
        else:
            out = score_pairwise(encoder, self.pairs, self.spec.images)
            values = {"accuracy": out["accuracy"], "skipped_pairs": out["skipped_pairs"]}
            values.update({f"accuracy_{t}": v for t, v in out.get("accuracy_by_type", {}).items()})
        values.update(seconds=time.perf_counter() - start, items=self.items)
        return {f"{name}_{k}": float(v) for k, v in values.items()}


class BenchmarkWatch:
    """The `--eval_benchmarks` of a run: read once, scored at every evaluation."""

    def __init__(self, specs: list[WatchSpec], processor, batch_size: int = 64, seed: int = 0,
                 cache_dir: str | None = None):  # fmt: skip
        self.processor, self.batch_size = processor, batch_size
        self.watched = [Watched(s, seed, cache_dir) for s in specs]
        for w in self.watched:
            logger.info("--eval_benchmarks %s: %s %s, %d items", w.spec.name, w.spec.kind, w.spec.path, w.items)

    def __call__(self, model) -> dict[str, float]:
        """Every benchmark's numbers for `model` (a DDP-wrapped one is unwrapped), in eval mode and back."""
        clip = unwrap_clip(model)
        was_training = clip.training
        clip.eval()
        try:
            # one encoder per evaluation: benchmarks sharing images encode them once, for this model's weights
            plain = ClipEncoder(clip, self.processor, self.batch_size, progress=False)
            encoder = CachedEncoder(plain)
            out: dict[str, float] = {}
            for w in self.watched:
                out.update(w.score(encoder, plain))
            return out
        finally:
            clip.train(was_training)


@dataclass(frozen=True)
class Objective:
    """`metric` (higher is better) subject to `floor_metric` ≥ its starting value − `floor_margin`."""

    metric: str
    floor_metric: str | None = None
    floor_margin: float = 0.01

    @staticmethod
    def key(name: str) -> str:
        return name if name.startswith("eval_") else f"eval_{name}"

    def _read(self, metrics: dict, name: str) -> float:
        key = self.key(name)
        if key not in metrics:
            numbers = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
            raise KeyError(f"--objective_metric / --objective_floor_metric {name!r}: {key} is not among this "
                           f"evaluation's metrics {numbers}")  # fmt: skip
        return float(metrics[key])

    def floor_minimum(self, base: dict) -> float | None:
        """The lowest floor value a checkpoint may have, from the starting model's metrics (None: no floor)."""
        return None if self.floor_metric is None else self._read(base, self.floor_metric) - self.floor_margin

    def values(self, metrics: dict, floor_minimum: float | None) -> dict[str, float]:
        """`eval_objective` (the score, − 1 below the floor), whether the floor held, and the floor used."""
        score = self._read(metrics, self.metric)
        out = {"eval_objective_score": score}
        feasible = True
        if self.floor_metric is not None:
            feasible = self._read(metrics, self.floor_metric) >= floor_minimum
            out["eval_objective_floor_minimum"] = floor_minimum
        out["eval_objective_feasible"] = float(feasible)
        out["eval_objective"] = score if feasible else score - 1.0
        return out


def save_floor(output_dir: str, floor_minimum: float, base: float) -> None:
    with open(os.path.join(output_dir, FLOOR_FILE), "w") as f:
        json.dump({"floor_minimum": floor_minimum, "start": base}, f)


def load_floor(output_dir: str) -> float | None:
    path = os.path.join(output_dir, FLOOR_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return float(json.load(f)["floor_minimum"])

