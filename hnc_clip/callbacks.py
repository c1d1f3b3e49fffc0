"""The recipe's `TrainerCallback`s: the logit-scale clamp, SIGTERM handling, and `StepGuard`.

`StepGuard` applies an optimizer step only when its loss **and its gradients** are finite and some process had a
readable pair, without making the CPU wait for the GPU; and stops the run when it skipped too much
(`--max_skipped_fraction`, `--max_nonfinite_steps`).

A step's loss lives on the device. Reading it on the host (`.item()`) stalls the CPU until the GPU has finished
the backward, and then the GPU idles while the CPU queues the optimizer step and the next forward: on an H100 at
batch 1,024 the CPU waited ~17 ms per step there, and the GPU was busy only ~82 % of a step. So there are two ways:

- **on the device** (a fused torch optimizer — `adamw_torch_fused`, the default on CUDA — and no fp16 GradScaler):
  the skip flag — the max over the optimizer step's micro-steps and over processes of "the loss was not finite",
  "a gradient is not finite" (`torch._amp_foreach_non_finite_check_and_unscale_`, GradScaler's own check, after
  DDP's all-reduce, so every process sees the same) and "no process had a real row" — is handed to the optimizer as
  `found_inf`, the hook `torch.amp.GradScaler` uses; the fused kernel then leaves parameters, moments and step
  counts untouched. The host learns about the step from a non-blocking copy, read one micro-step later when the GPU
  has long passed it: the warning and the `--max_nonfinite_steps` stop come one step late, the skip itself is exact.
- **on the host** (any other optimizer; fp16 with GradScaler, which checks the gradients itself): the same flag,
  read once per optimizer step before it (one host sync), and the gradients dropped (`.grad = None`: AdamW then
  leaves those parameters and their moments alone; under GradScaler, which refuses a step without gradients, they
  are made infinite and it skips the step as an overflow).

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

from .errors import NothingTrainedError, RunAbortedError, TooManySkippedError
from .modeling import unwrap_clip

logger = logging.getLogger(__name__)
# As training goes, the share of skipped pairs is judged once this many pairs were seen (else only a count that
# already exceeds the bound for the whole run stops it): a few unlucky early batches are not evidence.
MIN_PAIRS_TO_JUDGE = 1000


class ClampLogitScale(TrainerCallback):
    """Clamp `logit_scale` to ln(max) after every optimizer step (open_clip, NegCLIP), so it can't run away."""

    def __init__(self, max_logit_scale: float):
        self.max_log = math.log(max_logit_scale)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            with torch.no_grad():
                unwrap_clip(model).logit_scale.clamp_(max=self.max_log)


class Preempted(SystemExit):
    """SIGTERM outside the training loop: unwinds the run through its cleanups (conversion workers terminated,
    temporary folders removed, the output folder's lock released) and exits 143 (128 + SIGTERM: "requeue")."""

    def __init__(self):
        super().__init__(143)


class SaveOnSigterm(TrainerCallback):
    """Preemption. Installed when a run starts (`install`), not when training does: from then on SIGTERM raises
    `Preempted` — during the data conversion, model loading, the final save — except inside the training loop, where
    (with `save`) it only sets a flag: the current step finishes, a checkpoint is saved and training stops (resume
    with `--resume_from_checkpoint`)."""

    def __init__(self, save: bool = True):
        self.save = save
        self.received = False
        self.training = False
        self._previous = None
        self._installed = False
        self._for_training_only = False  # installed at on_train_begin (no application installed it): undone at the end

    def install(self) -> SaveOnSigterm:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
            self._installed = True
        except ValueError:  # not the main thread (e.g. some notebook runners): nothing to install
            self._previous = None
        return self

    def uninstall(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _handler(self, signum, frame):
        self.received = True
        if self.training and self.save:
            logger.warning("SIGTERM received: saving a checkpoint at the end of this step, then stopping")
            return
        logger.warning("SIGTERM received: stopping")
        raise Preempted

    def on_train_begin(self, args, state, control, **kwargs):
        if not self._installed:  # the trainer used without the training application
            self._for_training_only = self.install()._installed
        self.training = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.received and self.save:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False
        if self._for_training_only:
            self.uninstall()
            self._for_training_only = False


class NonFiniteLossError(RunAbortedError):
    """The loss or the gradients were NaN/inf in more steps than `--max_nonfinite_steps` allows."""


def deepspeed_skips_nonfinite(trainer) -> bool:
    """Whether the trainer's DeepSpeed engine skips a step with non-finite gradients by itself (see the module
    docstring): ZeRO-1/2 set `check_grad_overflow` (fp16, or bf16 with it in the config); ZeRO-3 checks fp16 only."""
    optimizer = getattr(getattr(trainer, "model_wrapped", None), "optimizer", None)  # the engine's ZeRO optimizer
    return bool(getattr(optimizer, "check_grad_overflow", False)) or getattr(optimizer, "dtype", None) == torch.float16


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())


def zero_loss(model) -> torch.Tensor:
    """A loss with zero gradient for every trainable parameter, for a step that is skipped: backward stays cheap and
    harmless, DDP sees every parameter used, and StepGuard then drops the update."""
    return sum((p * 0.0).sum() for p in model.parameters() if p.requires_grad)


class StepGuard(TrainerCallback):
    """Decides, per optimizer step, whether the update is applied (see the module docstring), and per log whether
    the run goes on (`check_run`). The trainer hands each training micro-step's loss over (`hold`) and settles it
    after its backward is queued (`settle`); `note_rows` counts a micro-step without a forward. What a step logs
    goes to the trainer's `ledger` only if the step is applied."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.nonfinite_steps = 0  # non-finite steps the host has seen so far
        self._loss_bad = None  # device: 0-dim float32, 1.0 if the loss of a micro-step of this step was non-finite
        self._rows = None  # real rows of this optimizer step on every process: a host int, or a device 0-dim tensor
        self._reports: list[tuple[int, str, list[str], torch.Tensor, torch.cuda.Event | None]] = []
        self._on_device: bool | None = None
        self._pending: tuple | None = None  # a micro-step's (loss, components, metrics, weight, rows), until settled

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

    def note_rows(self, rows) -> None:
        """Add a micro-step's real rows (every process's: a device tensor under several processes)."""
        self._rows = rows if self._rows is None else self._rows + rows

    def hold(self, loss: torch.Tensor, components: dict, metrics: dict, weight: float, rows) -> None:
        """A training micro-step's loss, its components, what it logs (each value standing for `weight` of a full
        batch) and its real rows on every process (see `note_rows`), until `settle`."""
        self._pending = (loss, components, metrics, weight, rows)

    def settle(self, step_loss: torch.Tensor) -> torch.Tensor:
        """Record the held micro-step's metrics if its loss was finite on every process; else its optimizer step is
        skipped and counted. Runs after the backward is queued; on the device path nothing here waits for the GPU
        (a skipped step's metrics are masked out on the device)."""
        if self._pending is None:  # unreadable batch, one process: already handled by the trainer
            return step_loss
        loss, components, metrics, weight, rows = self._pending
        self._pending = None
        ok = self.check(loss, components, self.trainer.state.global_step + 1, rows)  # 1-based, as logged
        ledger = self.trainer.ledger
        if torch.is_tensor(ok):  # 0-dim bool on the device
            ledger.add_all("train", metrics, weight=weight, mask=ok)
            return torch.where(ok, step_loss, 0.0)
        if ok:
            ledger.add_all("train", metrics, weight=weight)
            return step_loss
        return torch.zeros_like(step_loss)

    def check(
        self, loss: torch.Tensor, components: dict[str, torch.Tensor], step: int, rows=None
    ) -> torch.Tensor | bool:
        """This micro-step's loss is finite on every process: a 0-dim bool device tensor, or a bool under DeepSpeed
        (read at once: its engine has already stepped). `rows`: see `note_rows`."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)  # [1]
        if self.trainer.accelerator.num_processes > 1 and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)  # every process skips, or none (asynchronous on the GPU)
        bad = bad.reshape(())
        if rows is not None:
            self.note_rows(rows)
        if self.trainer.is_deepspeed_enabled:
            if bad.item() == 0:  # the one host sync of a step
                return True
            values = {k: v.item() for k, v in components.items()}
            if not deepspeed_skips_nonfinite(self.trainer):
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} ({_fmt(values)}) under DeepSpeed, which applies the update "
                    "inside backward() and, with bf16 under ZeRO-3 or without \"bf16\": {\"check_grad_overflow\": "
                    "true} in its config, does not skip it: the weights may no longer be finite. Resume from the "
                    "last checkpoint (lower --learning_rate, check the data); under ZeRO-1/2, check_grad_overflow "
                    "lets DeepSpeed skip such steps"
                )
            self._report(step, "loss", values)
            return False
        self.read_reports()  # earlier micro-steps': the GPU has passed them, so this does not wait in practice
        self._loss_bad = bad if self._loss_bad is None else torch.maximum(self._loss_bad, bad)
        values = [bad, *(v.detach().float().reshape(()) for v in components.values())]
        self._queue(step, "loss", list(components), values)
        return bad == 0

    def _queue(self, step: int, kind: str, names: list[str], values: list[torch.Tensor]) -> None:
        """Copy a flag (and the values to report with it) to the host without waiting for it (pinned memory)."""
        host = torch.stack(values).to("cpu", non_blocking=True)
        event = None
        if values[0].is_cuda:
            event = torch.cuda.Event()
            event.record()
        self._reports.append((step, kind, names, host, event))

    def read_reports(self) -> None:
        """Warn about (and count) the non-finite steps whose flags have been copied to the host so far."""
        reports, self._reports = self._reports, []
        for step, kind, names, host, event in reports:
            if event is not None:
                event.synchronize()
            flag, *values = host.tolist()  # a host tensor: read without a device sync (and without an aten op)
            if flag > 0:
                self._report(step, kind, dict(zip(names, values)))

    def _report(self, step: int, kind: str, components: dict[str, float]) -> None:
        self.nonfinite_steps += 1
        limit = self.trainer.args.max_nonfinite_steps
        if kind == "loss":
            # The flag is all-reduced: with several processes the NaN may be another's, so say whose numbers these are.
            where = " on some process (this one's: " if self.trainer.accelerator.num_processes > 1 else " ("
            what = f"non-finite loss at step {step}{where}{_fmt(components)})"
        else:
            what = f"non-finite gradients at step {step} (the loss was finite)"
        logger.warning(f"{what}: step skipped ({self.nonfinite_steps}/{limit})")
        if self.nonfinite_steps > limit:
            raise NonFiniteLossError(
                f"the loss or the gradients were non-finite in {self.nonfinite_steps} steps (last at step {step}); "
                "lower --learning_rate, check --bf16/--fp16 and the data, or raise --max_nonfinite_steps"
            )

    # -- per optimizer step (Trainer callbacks) -------------------------------------------------------------------

    def _nonfinite_grads(self, params: list[torch.Tensor]) -> torch.Tensor | None:
        """0-dim float32 on the device: 1.0 if any gradient holds a NaN/inf (GradScaler's own kernel, with a scale of
        1: no value changes). None under an fp16 GradScaler, which checks them itself."""
        if getattr(self.trainer.accelerator, "scaler", None) is not None:
            return None
        groups: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        found = None
        for (device, _), grads in groups.items():
            flag = torch.zeros((), dtype=torch.float32, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, torch.ones_like(flag))
            found = flag if found is None else torch.maximum(found, flag.to(found.device, non_blocking=True))
        return found

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        rows, self._rows = self._rows, None
        loss_bad, self._loss_bad = self._loss_bad, None
        add = self.trainer.ledger.add
        params = [p for p in self.trainer.model.parameters() if p.grad is not None]
        if self.trainer.is_deepspeed_enabled:
            return
        if not torch.is_tensor(rows) and rows is not None and rows == 0:  # one process, every micro-step unreadable
            self._drop(params)
            add("train", "skipped_steps", 1.0)
            add("train", "nonfinite_steps", 0.0)
            return
        step = state.global_step + 1  # 1-based, as logged
        grad_bad = self._nonfinite_grads(params) if params else None
        flags = [f for f in (loss_bad, grad_bad) if f is not None]
        if not flags:
            return
        nonfinite = flags[0] if len(flags) == 1 else torch.maximum(*flags)
        if grad_bad is not None:  # a warning names gradients only when the loss was finite
            only_grads = grad_bad if loss_bad is None else grad_bad * (1 - loss_bad)
            self._queue(step, "gradients", [], [only_grads])
        skip = nonfinite
        if torch.is_tensor(rows):  # several processes: was there a real row anywhere?
            skip = torch.maximum(skip, (rows == 0).float())
        add("train", "nonfinite_steps", nonfinite)
        add("train", "skipped_steps", skip)
        if self.on_device:
            self._optimizer().found_inf = skip
            return
        if skip.item():  # the one host sync of a step, on this path
            self._drop(params)
        self.read_reports()  # free now: the device has been waited for

    def _drop(self, params: list[torch.Tensor]) -> None:
        """Make the coming optimizer step leave every parameter alone: no gradient (AdamW then skips the parameter
        and its moments), or under an fp16 GradScaler, which refuses a step without gradients, infinite ones, which
        it skips as an overflow."""
        scaled = getattr(self.trainer.accelerator, "scaler", None) is not None
        for p in params:
            if scaled:
                p.grad.fill_(float("inf"))
            else:
                p.grad = None

    def on_optimizer_step(self, args, state, control, **kwargs):
        if hasattr(self._optimizer(), "found_inf"):
            del self._optimizer().found_inf  # a later step without a flag must not reuse this one

    def on_train_end(self, args, state, control, **kwargs):
        self.read_reports()  # the last step's flags

    # -- per log: does the run go on ---------------------------------------------------------------------------

    def check_run(self, final: bool) -> None:
        """Stop (`TooManySkippedError`) once more than `--max_skipped_fraction` of this run's pairs had no readable
        image, or of its optimizer steps were skipped; at the end (`final`), also when no step was applied
        (`NothingTrainedError`). As training goes, a share is judged only on enough evidence, or when the count
        already passes the bound for the whole run. Every process holds the same totals (summed over processes,
        `MetricLedger.totals`), so every one stops together."""
        self.read_reports()  # a NonFiniteLossError names the real cause first
        t = self.trainer
        bound = t.args.max_skipped_fraction
        totals = t.ledger.totals
        images, pairs = totals["skipped_images"], totals["pairs"]
        seen = images + pairs
        steps = t.state.global_step - t._initial_global_step
        planned = max(steps, t.state.max_steps - t._initial_global_step)
        skipped = totals["skipped_steps"]
        if final and steps > 0 and skipped >= steps:
            raise NothingTrainedError(
                f"no optimizer step of the {steps} was applied ({int(images):,} of {int(seen):,} pairs had no "
                f"readable image, {int(totals['nonfinite_steps'])} steps were non-finite): the weights are the "
                "starting model's, so nothing is saved. Check the images under --image_dir / --image_cache_dir "
                "(the log names the first unreadable ones)"
            )
        planned_pairs = planned * t._train_batch_size * t.args.gradient_accumulation_steps * t.args.world_size
        problems = []
        if images > bound * (seen if final or seen >= MIN_PAIRS_TO_JUDGE else max(seen, planned_pairs)):
            problems.append(f"{int(images):,} of {int(seen):,} pairs ({images / max(seen, 1):.1%}) had no readable "
                            "image (missing, corrupt, too large or outside --image_dir)")  # fmt: skip
        if skipped > bound * (steps if final else planned):
            nonfinite = int(totals["nonfinite_steps"])
            problems.append(f"{int(skipped)} of {steps} optimizer steps were skipped (no readable pair on any "
                            f"process, or a non-finite loss or gradient: {nonfinite})")  # fmt: skip
        if problems:
            raise TooManySkippedError(
                f"{'; '.join(problems)}: more than --max_skipped_fraction {bound}. Check the data (the log names "
                "the first unreadable images), or raise --max_skipped_fraction"
            )
