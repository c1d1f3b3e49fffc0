"""`HncTrainer`: the HF `Trainer` with a hard-negative contrastive loss. It holds only its overrides:

- `compute_loss` / `training_step`, the loss step: one forward over images and [positives; hard negatives] (or
  GradCache's chunked backward, `hnc_clip.gradcache`), gathered across processes, the loss from `LOSSES`. What
  every step records, either way, is `hnc_clip.step.run_loss_step`'s: the counts, a batch without a readable image
  (skipped, or a placeholder pair), the values logged once `StepGuard` (`hnc_clip.callbacks`) accepts the step;
- `evaluation_loop`: the same loss at evaluation, averaged over the pairs actually scored;
- `log`: the ledger's means since the last log (counts summed over processes), so they reach wandb/tensorboard via
  `report_to`; `StepGuard.check_run` stops a run that skipped too much;
- the sampler (`--group_by_image`) and `_save_checkpoint`: a checkpoint is marked complete only once every process
  has written it (`hnc_clip.output_dir`).

Hooks of one concern live beside it, as mixins: the models the loss reads, with their logit-scale taps and θ₀
(`hnc_clip.modeling.HoldsLossModels`), the --eval_benchmarks and the objective added to each evaluation
(`hnc_clip.objective.AddsEvaluationExtras`), the streamed data's loader and saved position
(`hnc_clip.data.stream.StreamedTraining`), the refusal of a checkpoint that does not fit the run
(`hnc_clip.resume.RefusesUnfitCheckpoints`). What a batch holds is `hnc_clip.data.batches`'s to know; the attention
kernels are `hnc_clip.attention`'s. The model is built in the entry script, not here (trl's trainers take it ready).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .attention import attention_kernels
from .callbacks import ClampLogitScale, SaveOnSigterm, StepGuard, zero_loss
from .data.batches import COLLATOR_COLUMNS, drop_repeated_rows, pairs_per_batch, pixel_affine_of
from .data.stream import StreamedTraining
from .engines import check_parallelism
from .families import family_of
from .forward import build_loss_inputs
from .gradcache import gradcache_backward
from .ledger import MetricLedger
from .losses import LossConfig, LossSpec, loss_components, loss_for_family, total_loss
from .modeling import HoldsLossModels
from .objective import AddsEvaluationExtras, EvaluationExtras
from .output_dir import disk_full_error, is_disk_full, mark_complete
from .resume import RefusesUnfitCheckpoints, check_resumable
from .schedules import SCHEDULES
from .step import StepLoss, run_loss_step

logger = logging.getLogger(__name__)


class HncTrainer(HoldsLossModels, AddsEvaluationExtras, StreamedTraining, RefusesUnfitCheckpoints, Trainer):
    # compute_loss returns a per-batch mean: let the Trainer divide by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self, *args, reference_model=None, card_info: dict | None = None, sigterm: SaveOnSigterm | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.family = family_of(self.model)
        # refuses a loss the family has no form of, or whose settings need embeddings it has not, up front
        loss_for_family(self.args.loss_type, self.family, LossConfig.from_args(self.args, 1.0))
        if self.args.max_logit_scale is None:  # unset: the family's clamp (100 for CLIP; none for SigLIP)
            self.args.max_logit_scale = self.family.max_logit_scale
        if self.loss_spec.needs_reference and reference_model is None:
            raise ValueError(f"--loss_type {self.args.loss_type} needs a reference_model (the frozen start)")
        self._bind_models(self.model, reference_model)  # the taps and θ₀ the loss reads (`HoldsLossModels`)
        # What steps record, until each log (the finite-loss check, `StepGuard`, decides what a training step adds).
        self.ledger = MetricLedger(lambda: getattr(self.data_collator, "count_names", ()),
                                   self.accelerator.num_processes, self.args.device)  # fmt: skip
        self.loss_state: dict = {}  # what a loss carries from step to step (`LossConfig.state`)
        self.card_info = card_info or {}
        if self.args.max_logit_scale is not None:
            self.add_callback(ClampLogitScale(self.args.max_logit_scale))
        self.step_guard = StepGuard(self)  # skips non-finite steps, without a host sync where the optimizer can
        self.add_callback(self.step_guard)
        # The application installs the handler when the run starts (`sigterm`); alone, the trainer installs its own.
        self.sigterm = sigterm if sigterm is not None else SaveOnSigterm() if self.args.save_on_sigterm else None
        if self.sigterm is not None:
            self.sigterm.save = self.args.save_on_sigterm
            self.add_callback(self.sigterm)
        check_parallelism(self)
        # (not `self.objective`: the Trainer's hyper-parameter search keeps a trial's number there)
        self.eval_extras = EvaluationExtras(self.args, self.processing_class, self.is_deepspeed_enabled)

    def _build_accelerator_args(self, **kwargs) -> dict:
        # --compile_regions / --compile_dynamic go into accelerate's plugin here: parsing writes no environment.
        args = super()._build_accelerator_args(**kwargs)
        plugin = args.get("dynamo_plugin")
        if plugin is not None and self.args.torch_compile:
            plugin.use_regional_compilation, plugin.dynamic = self.args.compile_regions, self.args.compile_dynamic
        return args

    @property
    def run_totals(self) -> dict[str, float]:
        """This train() call's counts, summed over processes (`MetricLedger.totals`)."""
        return self.ledger.totals

    @property
    def loss_spec(self) -> LossSpec:
        # Read from the arguments each time: a hyper-parameter search trial sets `args.loss_type` on this trainer.
        return loss_for_family(self.args.loss_type, self.family)

    def _set_signature_columns_if_needed(self):
        # The collator needs the caption and image columns that CLIPModel.forward does not name.
        if self._signature_columns is None:
            self._signature_columns = list(COLLATOR_COLUMNS)

    def _get_train_sampler(self, train_dataset=None):
        if not self.args.group_by_image:
            return super()._get_train_sampler(train_dataset)
        from .data.sampler import image_grouped_sampler

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return image_grouped_sampler(dataset, self.args.group_by_image, seed=self.args.seed)

    # -- loss ---------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        if mode == "eval":
            inputs = self._without_repeats(inputs)
        step = run_loss_step(self, model, inputs, mode, self._plain_loss)
        if step is None:  # no readable image, one process: a skipped step
            return zero_loss(model)
        return (step.loss, step.components) if return_outputs else step.loss

    def _plain_loss(self, model, inputs: dict, cfg: LossConfig) -> StepLoss:
        """One forward over the batch (gathered), the loss on it; `training_step` then runs the backward."""
        inp = build_loss_inputs(
            model,
            inputs,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
            gather=self.args.gather_negatives,
            block=self._block(model.training),
            max_logit_scale=self.args.max_logit_scale,
            reference_model=self.reference_model,
            theta0=self._theta0,
            taps=self._taps,
            with_negatives=self.loss_spec.uses_negatives,
            with_tokens=self.loss_spec.needs_tokens(cfg),
        )
        components = loss_components(self.loss_spec.fn, inp, cfg)
        return StepLoss(total_loss(components, inp), components, inp.local, inp.logit_scale, inp.rows)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.gradcache_chunk_size:
            loss = self._gradcache_step(model, inputs)
        else:
            loss = super().training_step(model, inputs, num_items_in_batch)
        return self.step_guard.settle(loss)

    def _gradcache_step(self, model, inputs) -> torch.Tensor:
        model.train()
        step = run_loss_step(self, model, self._prepare_inputs(inputs), "train", self._gradcache_loss)
        if step is None:  # no readable image, one process: a skipped step
            return torch.zeros((), device=self.args.device)
        return step.loss / self.current_gradient_accumulation_steps

    def _gradcache_loss(self, model, inputs: dict, cfg: LossConfig) -> StepLoss:
        """The loss over the whole batch with GradCache's chunked backward (`hnc_clip.gradcache`), run here."""
        world = self.accelerator.num_processes
        with self.compute_loss_context_manager():
            return StepLoss(*gradcache_backward(
                model,
                inputs,
                self.args.gradcache_chunk_size,
                self.loss_spec.fn,
                cfg,
                rank=self.accelerator.process_index,
                world_size=world,
                gather=self.args.gather_negatives,
                block=self._block(True),
                real_rows=inputs.get("real_rows"),
                max_logit_scale=self.args.max_logit_scale,
                loss_scale=1.0 / self.current_gradient_accumulation_steps,
                no_sync=(lambda: self.accelerator.no_sync(model)) if world > 1 else None,
                with_negatives=self.loss_spec.uses_negatives,
                with_tokens=self.loss_spec.needs_tokens(cfg),
            ))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -- what the loss step reads -------------------------------------------------------------------------------

    def current_hard_negative_weight(self) -> float:
        return SCHEDULES[self.args.hard_negative_schedule](self.state.global_step, self.args)

    def loss_config(self, training: bool = True) -> LossConfig:
        """This step's loss settings. `training` False: the loss reads the run's carried state (CE-CLIP's thresholds)
        from a copy, so an evaluation does not move it."""
        state = self.loss_state
        return LossConfig.from_args(self.args, self.current_hard_negative_weight(), state if training else dict(state))

    def _block(self, training: bool) -> int:
        """Pairs per process in a full batch: the rows every process pads to under several processes, and the
        weight 1 of a batch's recorded values."""
        size = self._train_batch_size if training else self.args.eval_batch_size
        return pairs_per_batch(self.train_dataset if training else self.eval_dataset, size)

    def _without_repeats(self, inputs: dict) -> dict:
        """Under several processes accelerate evens out the last evaluation batch with pairs from the start of the set
        (`even_batches`): the first `remainder` rows of that global batch, process 0's first, are the real ones. The
        repeats are dropped here, so that every pair is scored and counted once (what `gather_for_metrics` does for
        the Trainer's own loss); `drop_repeated_rows` keeps each hard-image pair with the row that brought it."""
        state = self.accelerator.gradient_state
        if self.accelerator.num_processes == 1 or not state.end_of_dataloader or state.remainder <= 0:
            return inputs
        b = self.args.eval_batch_size
        return drop_repeated_rows(inputs, min(b, max(0, state.remainder - self.accelerator.process_index * b)))

    def compute_loss_context_manager(self) -> contextlib.ExitStack:
        stack = super().compute_loss_context_manager()
        # The attention kernels of the forward and backward (see HncTrainingArguments.sdpa_backends).
        stack.enter_context(attention_kernels(self.args.sdpa_backends))
        return stack

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        pixels = inputs.get("pixel_values") if isinstance(inputs, dict) else None
        if pixels is not None and not torch.is_floating_point(pixels):
            # uint8 pixels: the collator's normalisation constants, sent to the device once, after the Trainer's
            # cast of float inputs (bf16 under DeepSpeed would shift every pixel by up to 0.4 %)
            if getattr(self, "_pixel_affine", None) is None:
                affine = pixel_affine_of(self.data_collator)
                self._pixel_affine = None if affine is None else affine.to(self.args.device)
            if self._pixel_affine is not None:
                inputs["pixel_affine"] = self._pixel_affine
        return inputs

    # -- evaluation ---------------------------------------------------------------------------------------------

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        # Put the averaged similarity statistics into the returned metrics (not only the log), so that
        # `trainer.evaluate()` and `eval_results.json` carry eval_hard_negative_accuracy etc. The loss is this
        # recipe's own, over the pairs scored on every process (the Trainer's weighs each batch by a count that
        # includes the pairs whose image could not be read, and a batch of those by its zero loss).
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        metrics = self.ledger.pop("eval", over="all")
        pairs = int(metrics.pop("pairs", 0))
        loss = metrics.pop("loss", float("nan"))
        if pairs == 0:
            logger.warning(f"{description}: no pair could be scored (every image unreadable): the loss is NaN")
        output.metrics[f"{metric_key_prefix}_loss"] = loss
        output.metrics[f"{metric_key_prefix}_samples"] = pairs
        output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in metrics.items()})
        return output

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._resume_from = resume_from_checkpoint
        if isinstance(resume_from_checkpoint, str):  # before the Trainer reads any of it
            check_resumable(resume_from_checkpoint, deepspeed=self.is_deepspeed_enabled)
        self.ledger.reset_totals()
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        if self.model.training is False:  # the last log came after an evaluation: the last steps' counts are here
            self.ledger.note_totals(self.ledger.pop("train"))
        if not (self.sigterm is not None and self.sigterm.received):  # a preempted run is not finished
            self.step_guard.check_run(final=True)
        return output

    # -- logging ------------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        if mode == "eval":  # `evaluation_loop` took the evaluation's values (over processes) into `logs` already
            metrics = {f"eval_{k}": v for k, v in self.ledger.pop(mode, over="none").items()}
            super().log({**metrics, **logs}, start_time)
        else:
            metrics = self.ledger.pop(mode)
            self.ledger.note_totals(metrics)
            super().log({**logs, **metrics}, start_time)
        if mode == "train" and "loss" in logs:  # a log of training progress, made on every process at this step
            self.step_guard.check_run(final=False)

    # -- checkpoints --------------------------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial) -> None:
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        try:
            super()._save_checkpoint(model, trial)
            self._save_stream_state(folder)
        except Exception as err:
            if not is_disk_full(err, folder):
                raise  # the folder stays unmarked: `last_complete_checkpoint` passes over it
            if self.args.should_save:
                shutil.rmtree(folder, ignore_errors=True)  # frees the space it took
            raise disk_full_error(f"checkpoint {os.path.basename(folder)}", folder, self.args.output_dir,
                                  removed=self.args.should_save) from err  # fmt: skip
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG state, ZeRO shards)
        if self.args.should_save:
            mark_complete(folder)

    # -- model card ---------------------------------------------------------------------------------------------

    def create_model_card(self, model_name: str | None = None, **kwargs) -> None:
        if not self.is_world_process_zero():
            return
        from .card import write_model_card

        write_model_card(self.args.output_dir, self.args, model_name=model_name, **self.card_info)
