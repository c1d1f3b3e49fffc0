"""Step timing and profiling callbacks for `bench/train_throughput.py`."""

from __future__ import annotations

import collections
import json
import os
import time
import warnings

import torch
from transformers import TrainerCallback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class StepTimer(TrainerCallback):
    """Each optimizer step's end as a device event (CUDA) and a wall time. The device is synchronised only at
    `sync_at` steps (the measured window's two ends), not at every step: a per-step sync would stop the CPU
    from queueing the next step while the GPU finishes this one, which training never does."""

    def __init__(self, sync_at: set[int]):
        self.sync_at, self.ends, self.events = sync_at, {}, []

    def on_step_end(self, args, state, control, **kwargs):
        cuda = torch.cuda.is_available() and args.device.type == "cuda"
        if cuda:
            self.events.append(torch.cuda.Event(enable_timing=True))
            self.events[-1].record()
        if state.global_step in self.sync_at or not cuda:
            if cuda:
                torch.cuda.synchronize()
            self.ends[state.global_step] = time.perf_counter()

    def step_ms(self, first: int, last: int) -> list[float]:
        """Durations of steps first+1..last (1-based global steps), from device events on CUDA."""
        if self.events:
            torch.cuda.synchronize()
            return [self.events[i - 1].elapsed_time(self.events[i]) for i in range(first, last)]
        return []


class StepProfiler(TrainerCallback):
    """`torch.profiler` over steps [start, start + n) (after the measured ones, so they are not slowed): writes
    the op table (by self device time on CUDA, self CPU time otherwise), a gzipped Chrome trace and a summary of
    where a step's time goes (`summarize_profile`). On CUDA it also sets `torch.cuda.set_sync_debug_mode("warn")`
    for those steps and counts each host sync by the Python line that caused it."""

    def __init__(self, start: int, n: int, out_dir: str, name: str):
        self.start, self.n, self.out_dir, self.name, self.prof = start, n, out_dir, name, None
        self.summary: dict = {}

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.start and self.prof is None:
            from torch.profiler import ProfilerActivity, profile

            cuda = torch.cuda.is_available()
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            if cuda:
                torch.cuda.synchronize()
            self.prof = profile(activities=activities, record_shapes=False)
            self.prof.__enter__()
            self.t0 = time.perf_counter()
            self.warnings = warnings.catch_warnings(record=True)
            self.caught = self.warnings.__enter__()
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")

    def on_step_end(self, args, state, control, **kwargs):
        if self.prof is not None and state.global_step >= self.start + self.n:
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
                torch.cuda.synchronize()
            wall_ms = 1000 * (time.perf_counter() - self.t0)
            self.warnings.__exit__(None, None, None)
            self.prof.__exit__(None, None, None)
            os.makedirs(self.out_dir, exist_ok=True)
            sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            averages = self.prof.key_averages()  # built once: it walks every recorded event
            with open(os.path.join(self.out_dir, f"{self.name}_ops.txt"), "w") as f:
                f.write(averages.table(sort_by=sort, row_limit=40))
            self.prof.export_chrome_trace(os.path.join(self.out_dir, f"{self.name}_trace.json.gz"))
            syncs = collections.Counter(
                f"{os.path.relpath(w.filename, REPO) if w.filename.startswith(REPO) else w.filename}:{w.lineno}"
                for w in self.caught
                if "synchroniz" in str(w.message)
            )
            self.summary = summarize_profile(averages, self.n, wall_ms, syncs)
            with open(os.path.join(self.out_dir, f"{self.name}_summary.json"), "w") as f:
                json.dump(self.summary, f, indent=1)
            self.prof = None


def summarize_profile(averages, steps: int, wall_ms: float, syncs: collections.Counter) -> dict:
    """Per step: wall time, GPU kernel time (sum of kernel durations: compute the GPU did), kernel launches, and
    the CPU time spent waiting on the device (synchronise calls, blocking copies), in the data loader and in the
    optimizer; plus the host syncs by source line and the 20 costliest GPU kernels (none on CPU). Wall ≫ GPU
    kernel time means the GPU waits for the CPU. `averages`: the profile's `key_averages()`."""

    from torch.autograd import DeviceType

    def cpu_ms(match) -> float:
        return sum(e.cpu_time_total for e in averages if match(e.key)) / 1000 / steps

    device_rows = [  # kernels and copies, as the op table's own total counts them
        e for e in averages
        if getattr(e, "device_type", None) == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    ]
    top = sorted(device_rows, key=lambda e: -e.self_device_time_total)[:20]
    launches = sum(e.count for e in averages if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    waits = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
    return {
        "steps": steps,
        "wall_ms_per_step": wall_ms / steps,
        "gpu_kernel_ms_per_step": sum(e.self_device_time_total for e in device_rows) / 1000 / steps,
        "kernel_launches_per_step": launches / steps,
        "cpu_wait_on_device_ms_per_step": cpu_ms(lambda k: k in waits),
        "dataloader_next_ms_per_step": cpu_ms(lambda k: k.startswith("enumerate(DataLoader)")),
        "optimizer_step_ms_per_step": cpu_ms(lambda k: k.startswith("Optimizer.step#")),
        "host_syncs_per_step": sum(syncs.values()) / steps,
        "host_syncs_by_line": dict(syncs.most_common(20)),
        # name (cut at 120 characters) -> [ms per step, calls per step]
        "top_gpu_kernels": {e.key[:120]: [e.self_device_time_total / 1000 / steps, e.count / steps] for e in top},
    }
