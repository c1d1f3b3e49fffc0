"""`MetricLedger`: what the trainer records per step, averaged (or, for counts, summed) at each log.

Values are running sums of device tensors: recording a step never waits for the GPU; the host reads them once per
log period (`pop`). Each value carries a weight, the share of a full batch it stands for, so a short last batch
counts for its rows and a placeholder batch (weight 0) for nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.distributed as dist

# Per-process counts: summed per log period, and over processes.
PROCESS_COUNTS = ("skipped_images", "truncated_captions", "pairs")
# Counted per log period (summed), where every other recorded value is averaged. The step counts are of flags that
# every process shares (all-reduced), so they are not summed over processes.
COUNTS = (*PROCESS_COUNTS, "nonfinite_steps", "skipped_steps")


class MetricLedger:
    """Running [sum, count] per name, per mode ("train", "eval"); and the run's totals of the logged counts.

    `data_counts`: what names the counts the collator adds to each batch (`HncCollator.count_names`: rules,
    sources, skip reasons), summed like `COUNTS`; read at each use, as the collator declares them."""

    def __init__(self, data_counts: Callable[[], tuple] = tuple, num_processes: int = 1, device=None):
        self._data_counts = data_counts
        self.num_processes = num_processes
        self.device = device
        self.recorded: dict[str, dict[str, list]] = {"train": {}, "eval": {}}
        # This train() call's totals, from the logged counts (summed over processes), for --max_skipped_fraction.
        self.totals = dict.fromkeys(
            ("skipped_images", "pairs", "skipped_steps", "nonfinite_steps", *self.data_counts), 0.0
        )

    @property
    def data_counts(self) -> tuple:
        return tuple(self._data_counts())

    def add(self, mode: str, name: str, value, weight: float = 1.0, mask: torch.Tensor | None = None) -> None:
        """Add `value`·`weight` to the running sum of `name`, and `weight` to its count. `weight` is the share of a
        full batch the value stands for (rows / per-device batch: 1.0 for a full batch, so equal batches average as
        they always did; 0 for a placeholder, whose values count for nothing). A device `mask` (0-dim bool) drops a
        step without reading it: a skipped step's values, NaN included, count for nothing."""
        if weight == 0:
            value, mask = 0.0, None
        value = value.detach().float() if torch.is_tensor(value) else float(value)
        if weight != 1.0:
            value = value * weight
        count = weight
        if mask is not None:
            value = torch.where(mask, value, 0.0) if torch.is_tensor(value) else mask * value
            count = mask.float() if weight == 1.0 else mask.float() * weight
        slot = self.recorded[mode].get(name)
        if slot is None:
            self.recorded[mode][name] = [value, count]
        else:
            slot[0], slot[1] = slot[0] + value, slot[1] + count

    def add_all(self, mode: str, metrics: dict, weight: float = 1.0, mask: torch.Tensor | None = None) -> None:
        for name, value in metrics.items():
            self.add(mode, name, value, weight, mask)

    def add_counts(self, mode: str, counts: dict) -> None:
        """A batch's counts (`hnc_clip.data.batches.pop_counts`): the per-process ones, then the collator's."""
        for name in ("skipped_images", "truncated_captions"):
            value = counts.get(name)
            self.add(mode, name, 0.0 if value is None else value)
        for name in self.data_counts:
            self.add(mode, name, counts["counts"].get(name, 0))

    def pop(self, mode: str, over: str = "counts") -> dict[str, float]:
        """What was recorded since the last call: means, except `COUNTS` which are summed; then cleared. With several
        processes, `over`: "counts" sums the per-process counts over them (every process logs training at the same
        steps), "all" every value (evaluation, where each process recorded the same names: a placeholder batch
        records them too), "none" nothing (a call made on one process only would leave the others waiting)."""
        recorded = self.recorded[mode]
        if over != "none" and self.num_processes > 1 and dist.is_initialized():
            names = sorted(recorded) if over == "all" else [*PROCESS_COUNTS, *self.data_counts]
            self._reduce_over_processes(recorded, names, check_names=over == "all")
        out = {}
        for name, (total, n) in recorded.items():
            value, n = float(total), float(n)  # the host syncs of a logged value, at logging time
            if name in COUNTS or name in self.data_counts:
                out[name] = value
            elif n > 0:  # else every step of the period was skipped
                out[name] = value / n
        recorded.clear()
        return out

    def _reduce_over_processes(self, recorded: dict, names: list[str], check_names: bool) -> None:
        """Sum [total, count] of `names` over processes, in place (names missing here count as zeros)."""
        device = self.device
        if check_names:  # a mismatch would make the all-reduce below hang (NCCL) or abort (gloo): say so instead
            digest = int.from_bytes(hashlib.blake2b("|".join(names).encode(), digest_size=7).digest(), "little")
            seen = torch.tensor([digest, -digest], dtype=torch.long, device=device)
            dist.all_reduce(seen, op=dist.ReduceOp.MAX)
            if seen.tolist() != [digest, -digest]:
                raise RuntimeError(f"processes recorded different evaluation metrics (this one: {names})")
        values = [torch.as_tensor(v, dtype=torch.float32, device=device) for n in names
                  for v in recorded.get(n, (0.0, 0.0))]  # fmt: skip
        if not values:
            return
        summed = torch.stack(values)
        dist.all_reduce(summed)
        for i, name in enumerate(names):
            recorded[name] = [summed[2 * i], summed[2 * i + 1]]

    def note_totals(self, metrics: dict[str, float]) -> None:
        for name in self.totals:
            self.totals[name] += metrics.get(name, 0.0)

    def reset_totals(self) -> None:
        self.totals = dict.fromkeys(self.totals, 0.0)
