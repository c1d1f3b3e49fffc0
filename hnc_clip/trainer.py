"""`HncTrainer`: the HF `Trainer` with a hard-negative contrastive loss. It overrides little:

- `compute_loss`: one forward of the model over images and [positives; hard negatives], gather across processes,
  pick the loss from `LOSSES`, record its components and similarity statistics;
- `prediction_step`: the same loss at evaluation (there are no labels for the default one to use);
- `log`: averages the recorded values since the last log, so they reach wandb/tensorboard via `report_to`.

The model is built in the entry script, not here (as trl's trainers take a ready model).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import Trainer

from .callbacks import ClampLogitScale, SaveOnSigterm, StepGuard
from .data.hnc import PAIR_COLUMNS
from .data.table import TABLE_COLUMNS
from .families import ModelFamily, family_of
from .forward import build_loss_inputs
from .gradcache import gradcache_backward
from .losses import LOSSES, Embeddings, LossConfig, LossInputs, loss_components, similarity_stats
from .modeling import LogitScaleTap
from .schedules import SCHEDULES

# Counted per log period (summed), where every other recorded value is averaged.
COUNTS = ("skipped_images", "truncated_captions", "nonfinite_steps")
# `--sdpa_backends` names → torch's SDPA backends.
SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}

_SDPA_TAG = "|hnc-sdpa="


def tag_compile_cache_with_sdpa_backends(backends) -> None:
    """Make torch.compile's on-disk caches tell graphs traced under different `--sdpa_backends` apart.

    The backend is chosen while a graph is traced, from the `sdpa_kernel` state around it; the FX-graph and
    AOTAutograd caches key a graph by its code, not by that state. A graph cached by an earlier run (or an earlier
    model in this process) under other backends would be reused without a word: on an H100 `--sdpa_backends math`
    ran flash kernels (bench/RESULTS.md, run 8). torch.compiler.config.cache_key_tag enters every cache key, so it
    carries the backends; a tag the user set is kept in front."""
    config = torch.compiler.config
    base = config.cache_key_tag.split(_SDPA_TAG)[0]
    tag = f"{base}{_SDPA_TAG}{','.join(backends)}"
    if config.cache_key_tag != tag:
        config.cache_key_tag = tag


logger = logging.getLogger(__name__)


def loss_for_family(loss_type: str, family: ModelFamily):
    """`--loss_type` in the form for the model's family (softmax for CLIP, sigmoid for SigLIP), naming the flag."""
    try:
        return LOSSES[loss_type].for_contrastive(family.contrastive)
    except ValueError as err:
        raise ValueError(f"--loss_type {loss_type} does not train a {family.name} model: {err}") from None


class UnsupportedParallelismError(ValueError):
    """A distributed engine this recipe does not support (yet)."""


def check_parallelism(trainer) -> None:
    """Refuse FSDP up front, naming what works, instead of a stack trace from inside `accelerator.prepare`."""
    if getattr(trainer, "is_fsdp_enabled", False):
        raise UnsupportedParallelismError(
            "FSDP is not supported: FSDP2's fully_shard refuses CLIP's 0-dim `logit_scale` parameter "
            "(\"fully_shard doesn't support scalar parameters\"; seen with torch 2.11 on an H200), and changing its "
            "shape would break loading the checkpoint as a CLIPModel. Use DDP (accelerate_configs/multi_gpu.yaml) or "
            "DeepSpeed ZeRO-2/3 (accelerate_configs/zero2.yaml, zero3.yaml), which shard optimizer state and "
            "parameters too."
        )


class HncTrainer(Trainer):
    # compute_loss returns a per-batch mean: let the Trainer divide by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, reference_model=None, card_info: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.family = family_of(self.model)
        self.loss_spec = loss_for_family(self.args.loss_type, self.family)
        if self.args.max_logit_scale is None:  # unset: the family's clamp (100 for CLIP; none for SigLIP)
            self.args.max_logit_scale = self.family.max_logit_scale
        if self.loss_spec.needs_reference and reference_model is None:
            raise ValueError(f"--loss_type {self.args.loss_type} needs a reference_model (the frozen start)")
        self.reference_model = reference_model
        if reference_model is not None:
            self.reference_model = reference_model.to(self.args.device)
            if self.is_deepspeed_enabled and (self.args.bf16 or self.args.fp16):
                # DeepSpeed casts the inputs to its compute dtype; the reference must take the same inputs.
                self.reference_model.to(torch.bfloat16 if self.args.bf16 else torch.float16)
        self._taps = (
            LogitScaleTap(self.model),
            LogitScaleTap(self.reference_model) if self.reference_model is not None else None,
        )
        # θ₀ for ‖θ−θ₀‖² (`--l2_reg_weight`): only the trainable tensors, which are the only ones that can move.
        self._theta0 = None
        if self.args.l2_reg_weight > 0:
            self._theta0 = [(p, p.detach().clone()) for p in self.model.parameters() if p.requires_grad]
        # name -> [running sum, count]. Sums of device tensors: recording a step never waits for the GPU (nor does
        # the finite-loss check, `StepGuard`, where the optimizer can skip a step by itself).
        self._metrics: dict[str, dict[str, list]] = {"train": {}, "eval": {}}
        self._pending: tuple | None = None  # this micro-step's (loss, components, metrics), until checked
        self.card_info = card_info or {}
        if self.args.max_logit_scale is not None:
            self.add_callback(ClampLogitScale(self.args.max_logit_scale))
        self.step_guard = StepGuard(self)  # skips non-finite steps, without a host sync where the optimizer can
        self.add_callback(self.step_guard)
        self.sigterm = SaveOnSigterm() if self.args.save_on_sigterm else None
        if self.sigterm is not None:
            self.add_callback(self.sigterm)
        check_parallelism(self)
        if self.args.gradcache_chunk_size and self.is_deepspeed_enabled:
            raise ValueError("--gradcache_chunk_size works with single-process and DDP training, not DeepSpeed")

    def _set_signature_columns_if_needed(self):
        # The collator needs the caption and image columns that CLIPModel.forward does not name.
        if self._signature_columns is None:
            self._signature_columns = [*PAIR_COLUMNS, *TABLE_COLUMNS, "pixel_values"]

    def _get_train_sampler(self, train_dataset=None):
        if not self.args.group_by_image:
            return super()._get_train_sampler(train_dataset)
        from .data.sampler import ImageGroupedSampler

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # Read the column as Arrow: through the dataset's image transform it would decode every image first.
        image_ids = dataset.with_format("arrow")["image_id"].to_pylist()
        return ImageGroupedSampler(image_ids, self.args.group_by_image, seed=self.args.seed)

    # -- loss ---------------------------------------------------------------------------------------------------

    def current_hard_negative_weight(self) -> float:
        return SCHEDULES[self.args.hard_negative_schedule](self.state.global_step, self.args)

    def _loss_inputs(self, model, inputs: dict) -> LossInputs:
        return build_loss_inputs(
            model,
            inputs,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes if self.args.gather_negatives else 1,
            max_logit_scale=self.args.max_logit_scale,
            reference_model=self.reference_model,
            theta0=self._theta0,
            taps=self._taps,
            with_negatives=self.loss_spec.uses_negatives,
        )

    def loss_config(self) -> LossConfig:
        a = self.args
        return LossConfig(
            hard_negative_weight=self.current_hard_negative_weight(),
            l2_reg_weight=a.l2_reg_weight,
            kl_weight=a.kl_weight,
            kl_temperature=a.kl_temperature,
            dpo_beta=a.dpo_beta,
            dpo_contrastive_weight=a.dpo_contrastive_weight,
            mask_same_image=a.mask_same_image,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        skipped = inputs.pop("skipped_images", None)
        truncated = inputs.pop("truncated_captions", None)
        mode = "train" if model.training else "eval"
        if inputs["pixel_values"].shape[0] == 0:  # every image of this batch was unreadable
            self._add(mode, "skipped_images", skipped)
            if model.training:
                self.step_guard.skip_this_step()
            return self._zero_loss(model)
        inp = self._loss_inputs(model, inputs)
        cfg = self.loss_config()
        components = loss_components(self.loss_spec.fn, inp, cfg)
        loss = torch.stack(list(components.values())).sum()
        metrics = self._step_metrics(components, inp.local, cfg, inp.logit_scale, skipped, truncated)
        if model.training:
            self._pending = (loss, components, metrics)  # checked in training_step, after the backward is launched
        else:
            self._add_all("eval", metrics)
        return (loss, components) if return_outputs else loss

    def compute_loss_context_manager(self) -> contextlib.ExitStack:
        stack = super().compute_loss_context_manager()
        # The attention kernels of the forward and backward (see HncTrainingArguments.sdpa_backends).
        tag_compile_cache_with_sdpa_backends(self.args.sdpa_backends)
        stack.enter_context(sdpa_kernel([SDPA_BACKENDS[name] for name in self.args.sdpa_backends]))
        return stack

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.gradcache_chunk_size:
            loss = self._gradcache_step(model, inputs)
        else:
            loss = super().training_step(model, inputs, num_items_in_batch)
        return self._settle(loss)

    def _settle(self, step_loss: torch.Tensor) -> torch.Tensor:
        """Record this micro-step's metrics if its loss was finite on every process; else its optimizer step is
        skipped (`StepGuard`) and counted. Runs after the backward is queued; on the device path nothing here waits
        for the GPU (a skipped step's metrics are masked out on the device)."""
        if self._pending is None:  # unreadable batch: already handled in compute_loss
            return step_loss
        loss, components, metrics = self._pending
        self._pending = None
        ok = self.step_guard.check(loss, components, self.state.global_step + 1)  # 1-based, as logged
        if torch.is_tensor(ok):  # 0-dim bool on the device
            self._add_all("train", metrics, weight=ok)
            self._add("train", "nonfinite_steps", (~ok).float())
            return torch.where(ok, step_loss, 0.0)
        self._add("train", "nonfinite_steps", float(not ok))
        if ok:
            self._add_all("train", metrics)
            return step_loss
        return torch.zeros_like(step_loss)

    @staticmethod
    def _zero_loss(model) -> torch.Tensor:
        """A loss with zero gradient for every trainable parameter, for a step that is skipped: backward stays
        cheap and harmless, DDP sees every parameter used, and StepGuard then drops the update."""
        return sum((p * 0.0).sum() for p in model.parameters() if p.requires_grad)

    @staticmethod
    def _step_metrics(components, local: Embeddings, cfg: LossConfig, logit_scale, skipped, truncated=None) -> dict:
        """What a step logs, as (device) tensors: nothing here waits for the GPU."""
        metrics = {"skipped_images": skipped, "truncated_captions": truncated}
        metrics.update(components)
        metrics.update(similarity_stats(local))
        metrics["hard_negative_weight"] = cfg.hard_negative_weight
        metrics["logit_scale"] = logit_scale
        return {k: v for k, v in metrics.items() if v is not None}

    def _add(self, mode: str, name: str, value, weight: torch.Tensor | float = 1.0) -> None:
        """Add `value` to the running sum of `name`, and `weight` to its count. A device `weight` (0-dim bool) masks
        a step without reading it: a skipped step's values, NaN included, count for nothing."""
        value = value.detach().float() if torch.is_tensor(value) else float(value)
        if torch.is_tensor(weight):
            value = torch.where(weight, value, 0.0) if torch.is_tensor(value) else weight * value
            weight = weight.float()
        slot = self._metrics[mode].get(name)
        if slot is None:
            self._metrics[mode][name] = [value, weight]
        else:
            slot[0], slot[1] = slot[0] + value, slot[1] + weight

    def _add_all(self, mode: str, metrics: dict, weight: torch.Tensor | float = 1.0) -> None:
        for name, value in metrics.items():
            self._add(mode, name, value, weight)

    def _prepare_inputs(self, inputs):
        # Under DeepSpeed the Trainer casts every float input to bf16; the uint8 pixels' normalisation constants
        # must stay float32 (bf16 would shift every pixel by up to 0.4 %), so they go to the device uncast.
        affine = inputs.pop("pixel_affine", None) if isinstance(inputs, dict) else None
        inputs = super()._prepare_inputs(inputs)
        if affine is not None:
            # non_blocking, as the Trainer copies the rest of the batch: a blocking host-to-device copy may wait for
            # the GPU queue. Safe: from pinned memory the caching host allocator keeps the source alive until the copy
            # is done, and from pageable memory CUDA stages it before returning.
            inputs["pixel_affine"] = affine.to(self.args.device, dtype=torch.float32, non_blocking=True)
        return inputs

    def _gradcache_step(self, model, inputs) -> torch.Tensor:
        model.train()
        inputs = self._prepare_inputs(inputs)
        skipped = inputs.pop("skipped_images", None)
        truncated = inputs.pop("truncated_captions", None)
        world = self.accelerator.num_processes if self.args.gather_negatives else 1
        cfg = self.loss_config()
        with self.compute_loss_context_manager():
            loss, components, local, scale = gradcache_backward(
                model,
                inputs,
                self.args.gradcache_chunk_size,
                self.loss_spec.fn,
                cfg,
                rank=self.accelerator.process_index,
                world_size=world,
                max_logit_scale=self.args.max_logit_scale,
                loss_scale=1.0 / self.current_gradient_accumulation_steps,
                no_sync=(lambda: self.accelerator.no_sync(model)) if self.accelerator.num_processes > 1 else None,
                with_negatives=self.loss_spec.uses_negatives,
            )
        self._pending = (loss, components, self._step_metrics(components, local, cfg, scale, skipped, truncated))
        return loss / self.current_gradient_accumulation_steps

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        # Put the averaged similarity statistics into the returned metrics (not only the log), so that
        # `trainer.evaluate()` and `eval_results.json` carry eval_hard_negative_accuracy etc.
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in self._pop_metrics("eval").items()})
        return output

    def _pop_metrics(self, mode: str) -> dict[str, float]:
        """What was recorded since the last call: means, except `COUNTS` which are summed; then cleared."""
        recorded = self._metrics[mode]
        out = {}
        for name, (total, n) in recorded.items():
            value, n = float(total), float(n)  # the host syncs of a logged value, at logging time
            if name in COUNTS:
                out[name] = value
            elif n > 0:  # else every step of the period was skipped
                out[name] = value / n
        recorded.clear()
        return out

    # -- logging ------------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = self._pop_metrics(mode)
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        super().log({**logs, **metrics}, start_time)

    # -- model card ---------------------------------------------------------------------------------------------

    def create_model_card(self, model_name: str | None = None, **kwargs) -> None:
        if not self.is_world_process_zero():
            return
        from .card import write_model_card

        write_model_card(self.args.output_dir, self.args, model_name=model_name, **self.card_info)
