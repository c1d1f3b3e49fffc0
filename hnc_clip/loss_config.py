"""`LossConfig`: every loss setting, declared here once; `HncTrainingArguments` takes each flag's default from it
and the trainer fills it from the flags of the same names (`from_args`). Plain values, no torch: the arguments
import it cheaply."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class LossConfig:
    hard_negative_weight: float = 1.0  # λ (the trainer passes the scheduled value each step)
    l2_reg_weight: float = 0.0
    kl_weight: float = 1.0
    kl_temperature: float = 1.0
    dpo_beta: float = 0.1
    dpo_contrastive_weight: float = 1.0
    mask_same_image: bool = True
    fsc_focal_gamma: float = 2.0  # γ of FSC-CLIP's hard-negative focal term
    fsc_label_smoothing: float = 0.02  # ε of FSC-CLIP's smoothed hard-negative targets
    fsc_local_weight: float = 0.0  # μ of FSC-CLIP's local token–patch term (0: off, as the authors' flag default)
    fsc_local_normalizer: str = "minmax"  # how a token weighs the patches (`hnc_clip.losses.PATCH_WEIGHTS`)
    fsc_local_sparsify: bool = False  # drop patches below the uniform weight (min–max only)
    ce_clip_imc_weight: float = 0.2  # CE-CLIP's intra-modal contrast
    ce_clip_cmr_weight: float = 0.2  # CE-CLIP's cross-modal rank term
    ce_clip_threshold_max: float = 10.0  # CE-CLIP's clamp of its adaptive thresholds
    # Values a loss carries from one training step to the next (CE-CLIP's thresholds, detached tensors), read and
    # written by the loss. The trainer keeps one dict per run and passes a copy at evaluation, which then reads them
    # without moving them. None: every call starts from the initial values and records nothing.
    state: dict | None = None

    @classmethod
    def from_args(cls, args, hard_negative_weight: float, state: dict | None = None) -> LossConfig:
        """The settings from the flags of the same names, λ as scheduled for this step, and the carried `state`."""
        named = {f.name: getattr(args, f.name) for f in fields(cls) if f.name not in ("hard_negative_weight", "state")}
        return cls(hard_negative_weight=hard_negative_weight, state=state, **named)
