"""What every evaluation during training adds to the Trainer's metrics: the --eval_benchmarks (`BenchmarkWatch`)
and the objective checkpoints are chosen by (`Objective`), subject to its floor from the starting model; and
`HncTrainer`'s `evaluate`, which adds them (`AddsEvaluationExtras`)."""

from __future__ import annotations

import os

from .evaluation.watch import FLOOR_FILE, BenchmarkWatch, Objective, load_floor, parse_watches, save_floor


class EvaluationExtras:
    """The --eval_benchmarks and the objective of a training run (`args`: `HncTrainingArguments`); `active` is False
    where neither is asked for."""

    def __init__(self, args, processing_class, deepspeed: bool):
        self.args = args
        self.watch = None
        if args.eval_benchmarks:
            if deepspeed:  # the watch runs the unwrapped model: ZeRO-3 shards its weights
                raise ValueError("--eval_benchmarks run the model outside the engine: not under DeepSpeed (use DDP)")
            if processing_class is None:
                raise ValueError("--eval_benchmarks need the model's processor (HncTrainer(processing_class=...))")
            self.watch = BenchmarkWatch(parse_watches(args.eval_benchmarks), processing_class,
                                        args.per_device_eval_batch_size, args.seed)  # fmt: skip
        self.objective = Objective(args.objective_metric, args.objective_floor_metric,
                                   args.objective_floor_margin) if args.objective_metric else None  # fmt: skip
        self.floor_minimum: float | None = None  # the objective's floor, from the starting model

    @property
    def active(self) -> bool:
        return self.watch is not None or self.objective is not None

    def __call__(self, metrics: dict, model, global_step: int) -> dict:
        """The benchmarks' scores and the objective, as `eval_*` metrics beside `metrics` (the Trainer's)."""
        extra = {}
        if self.watch is not None:
            # every process scores the whole benchmark (the same numbers everywhere, which the checkpoint choice
            # on each process needs)
            extra = {f"eval_{k}": v for k, v in self.watch(model).items()}
        if self.objective is not None:
            both = {**metrics, **extra}
            extra.update(self.objective.values(both, self.floor(both, global_step)))
        return extra

    def floor(self, metrics: dict, global_step: int) -> float | None:
        """The objective's floor: from the start evaluation (step 0, saved for a resumed run), else that file."""
        goal, out = self.objective, self.args.output_dir
        if goal.floor_metric is None:
            return None
        if global_step == 0:
            self.floor_minimum = goal.floor_minimum(metrics)
            if self.args.should_save:
                os.makedirs(out, exist_ok=True)
                save_floor(out, self.floor_minimum, self.floor_minimum + goal.floor_margin)
        if self.floor_minimum is None:
            self.floor_minimum = load_floor(out)
        if self.floor_minimum is None:
            raise RuntimeError(f"--objective_floor_metric: no starting value (the --eval_on_start evaluation at step 0"
                               f", or {out}/{FLOOR_FILE} of the run being resumed)")  # fmt: skip
        return self.floor_minimum


class AddsEvaluationExtras:
    """`HncTrainer.evaluate` (a mixin before `transformers.Trainer`; the trainer builds `self.eval_extras`): the
    Trainer's evaluation, then (once, not per evaluation set) the --eval_benchmarks and the objective, merged into
    the returned metrics (what --metric_for_best_model reads) and logged."""

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        outer = not getattr(self, "_evaluating", False)
        self._evaluating = True
        try:
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._evaluating = not outer
        if not outer or metric_key_prefix != "eval" or not self.eval_extras.active:
            return metrics
        extra = self.eval_extras(metrics, self.model, self.state.global_step)
        metrics.update(extra)
        self.log(extra)
        return metrics
