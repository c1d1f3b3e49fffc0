"""The recipe's `TrainerCallback`s: the logit-scale clamp, save-on-SIGTERM, and `StepGuard`.

`StepGuard` skips an optimizer step whose loss was NaN/inf (or whose batch had no readable image) without making the
CPU wait for the GPU.

A step's loss lives on the device. Reading it on the host (`.item()`) stalls the CPU until the GPU has finished
the backward, and then the GPU idles while the CPU queues the optimizer step and the next forward: on an H100 at
batch 1,024 the CPU waited ~17 ms per step there, and the GPU was busy only ~82 % of a step. So there are two ways:

- **on the device** (a fused torch optimizer — `adamw_torch_fused`, the default on CUDA — and no fp16 GradScaler):
  the non-finite flag (max over the optimizer step's micro-steps and over processes) is handed to the optimizer as
  `found_inf`, the hook `torch.amp.GradScaler` uses; the fused kernel then leaves parameters, moments and step
  counts untouched. The host learns about the step from a non-blocking copy, read one micro-step later when the GPU
  has long passed it: the warning and the `--max_nonfinite_steps` stop come one step late, the skip itself is exact.
- **on the host** (any other optimizer, DeepSpeed, fp16): read the flag after the backward is queued (one host sync
  per step) and drop the gradients (`.grad = None`: AdamW then leaves those parameters and their moments alone).

DeepSpeed is a case apart: its engine steps inside `backward()` (accelerate's `DeepSpeedEngineWrapper`), before
the trainer can look at the loss, so only DeepSpeed itself can skip the update — with fp16 (loss scaling) always,
with bf16 only under ZeRO-1/2 and `"bf16": {"check_grad_overflow": true}` in its config. Without that protection a
non-finite loss stops the run at once (`NonFiniteLossError`): the update it produced may have made the weights
non-finite, and the honest next step is to resume from the last checkpoint.
"""

from __future__ import annotations

import logging
import math
import signal

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from .modeling import unwrap_clip

logger = logging.getLogger(__name__)


class ClampLogitScale(TrainerCallback):
    """Clamp `logit_scale` to ln(max) after every optimizer step (open_clip, NegCLIP), so it can't run away."""

    def __init__(self, max_logit_scale: float):
        self.max_log = math.log(max_logit_scale)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            with torch.no_grad():
                unwrap_clip(model).logit_scale.clamp_(max=self.max_log)


class SaveOnSigterm(TrainerCallback):
    """Preemption: on SIGTERM, finish the current step, save a checkpoint and stop (resume with
    `--resume_from_checkpoint`). The handler only sets a flag; the Trainer saves at a step boundary."""

    def __init__(self):
        self.received = False
        self._previous = None

    def _handler(self, signum, frame):
        logger.warning("SIGTERM received: saving a checkpoint at the end of this step, then stopping")
        self.received = True

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread (e.g. some notebook runners): nothing to install
            self._previous = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class NonFiniteLossError(RuntimeError):
    """The loss was NaN/inf in more steps than `--max_nonfinite_steps` allows."""


def deepspeed_skips_nonfinite(trainer) -> bool:
    """Whether the trainer's DeepSpeed engine skips a step with non-finite gradients by itself (see the module
    docstring): ZeRO-1/2 set `check_grad_overflow` (fp16, or bf16 with it in the config); ZeRO-3 checks fp16 only."""
    optimizer = getattr(getattr(trainer, "model_wrapped", None), "optimizer", None)  # the engine's ZeRO optimizer
    return bool(getattr(optimizer, "check_grad_overflow", False)) or getattr(optimizer, "dtype", None) == torch.float16


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())


class StepGuard(TrainerCallback):
    """Decides, per optimizer step, whether the update is applied (see the module docstring). `check` is called by
    the trainer once per micro-step, after its backward is queued."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.nonfinite_steps = 0  # non-finite micro-steps the host has seen so far
        self._drop_grads = False  # host-known skip of this optimizer step
        self._found_inf = None  # device: 0-dim float32, 1.0 if any micro-step of this optimizer step was non-finite
        self._reports: list[tuple[int, list[str], torch.Tensor, torch.cuda.Event | None]] = []
        self._on_device: bool | None = None

    # -- which way ------------------------------------------------------------------------------------------------

    def _optimizer(self):
        opt = self.trainer.optimizer
        return getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps the torch one

    @property
    def on_device(self) -> bool:
        """Whether the optimizer can skip a step by itself (decided once, when training has its optimizer)."""
        if self._on_device is None:
            t = self.trainer
            self._on_device = (
                bool(getattr(self._optimizer(), "_step_supports_amp_scaling", False))  # fused Adam(W), SGD, Adagrad
                and getattr(t.accelerator, "scaler", None) is None  # an fp16 GradScaler sets found_inf itself
                and not t.is_deepspeed_enabled  # DeepSpeed steps its own optimizer
            )
        return self._on_device

    # -- per micro-step -------------------------------------------------------------------------------------------

    def skip_this_step(self) -> None:
        """Skip the coming optimizer step, decided on the host (a batch with no readable image)."""
        self._drop_grads = True

    def check(self, loss: torch.Tensor, components: dict[str, torch.Tensor], step: int) -> torch.Tensor | bool:
        """This micro-step's loss is finite on every process: a 0-dim bool device tensor (on the device) or a bool
        (on the host; the step is then already marked for skipping)."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)  # [1]
        if self.trainer.accelerator.num_processes > 1 and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every process skips, or none (asynchronous on the GPU)
        bad = bad.reshape(())
        if not self.on_device:
            if bad.item() == 0:  # the one host sync of a step
                return True
            self._drop_grads = True
            values = {k: v.item() for k, v in components.items()}
            if self.trainer.is_deepspeed_enabled and not deepspeed_skips_nonfinite(self.trainer):
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} ({_fmt(values)}) under DeepSpeed, which applies the update "
                    "inside backward() and, with bf16 under ZeRO-3 or without \"bf16\": {\"check_grad_overflow\": "
                    "true} in its config, does not skip it: the weights may no longer be finite. Resume from the "
                    "last checkpoint (lower --learning_rate, check the data); under ZeRO-1/2, check_grad_overflow "
                    "lets DeepSpeed skip such steps"
                )
            self._report(step, values)
            return False
        self.read_reports()  # earlier micro-steps': the GPU has passed them, so this does not wait in practice
        self._found_inf = bad if self._found_inf is None else torch.maximum(self._found_inf, bad)
        values = torch.stack([bad, *(v.detach().float().reshape(()) for v in components.values())])
        host = values.to("cpu", non_blocking=True)  # into pinned memory: the CPU does not wait for it
        event = None
        if values.is_cuda:
            event = torch.cuda.Event()
            event.record()
        self._reports.append((step, list(components), host, event))
        return bad == 0

    def read_reports(self) -> None:
        """Warn about (and count) the non-finite micro-steps whose flags have been copied to the host so far."""
        reports, self._reports = self._reports, []
        for step, names, host, event in reports:
            if event is not None:
                event.synchronize()
            flag, *values = host.tolist()  # a host tensor: read without a device sync (and without an aten op)
            if flag > 0:
                self._report(step, dict(zip(names, values)))

    def _report(self, step: int, components: dict[str, float]) -> None:
        self.nonfinite_steps += 1
        limit = self.trainer.args.max_nonfinite_steps
        # The flag is all-reduced: with several processes the NaN may be another's, so say whose numbers these are.
        where = " on some process (this one's: " if self.trainer.accelerator.num_processes > 1 else " ("
        logger.warning(
            f"non-finite loss at step {step}{where}{_fmt(components)}): step skipped ({self.nonfinite_steps}/{limit})"
        )
        if self.nonfinite_steps > limit:
            raise NonFiniteLossError(
                f"the loss was non-finite in {self.nonfinite_steps} steps (last at step {step}); "
                "lower --learning_rate, check --bf16/--fp16 and the data, or raise --max_nonfinite_steps"
            )

    # -- per optimizer step (Trainer callbacks) -------------------------------------------------------------------

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._drop_grads:
            for p in self.trainer.model.parameters():
                p.grad = None
            self._drop_grads = False
        if self._found_inf is not None:
            self._optimizer().found_inf = self._found_inf

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._found_inf is not None:
            del self._optimizer().found_inf  # a later step without a flag must not reuse this one
            self._found_inf = None

    def on_train_end(self, args, state, control, **kwargs):
        self.read_reports()  # the last step's flags
