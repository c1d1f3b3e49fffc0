"""WiSE-FT weight-space ensembles: (1 - alpha) * theta_base + alpha * theta_tuned (Wortsman et al., CVPR 2022).

Sweeping alpha traces the trade-off between what fine-tuning adds (here: relational / hard-negative accuracy) and
what it may cost (zero-shot recognition); `hnc_clip.evaluation.plots.plot_wise_tradeoff` draws it.
"""

from __future__ import annotations

import copy

import torch


def parse_alphas(text: str | None) -> list[float]:
    """`"0.25,0.5,0.75"` -> [0.25, 0.5, 0.75]; each alpha must lie in [0, 1]."""
    if not text:
        return []
    try:
        alphas = [float(a) for a in str(text).split(",") if a.strip()]
    except ValueError as err:
        raise ValueError(f"--wise_alpha: expected comma-separated numbers in [0, 1], got {text!r}") from err
    if any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"--wise_alpha: every alpha must be in [0, 1], got {alphas}")
    return alphas


def wise_name(tuned_name: str, alpha: float) -> str:
    """Display name of an interpolated model: `<tuned>@wise0.5`."""
    return f"{tuned_name}@wise{alpha:g}"


def check_same_architecture(base_state: dict[str, torch.Tensor], tuned_state: dict[str, torch.Tensor]) -> None:
    """Raise `ValueError` naming the differing parameters unless both state dicts have the same keys and shapes."""
    only_base = sorted(set(base_state) - set(tuned_state))
    only_tuned = sorted(set(tuned_state) - set(base_state))
    shapes = sorted(
        f"{k}: {tuple(base_state[k].shape)} vs {tuple(tuned_state[k].shape)}"
        for k in set(base_state) & set(tuned_state)
        if base_state[k].shape != tuned_state[k].shape
    )
    if only_base or only_tuned or shapes:
        problems = []
        if only_base:
            problems.append(f"only in base: {only_base[:5]}{' ...' if len(only_base) > 5 else ''}")
        if only_tuned:
            problems.append(f"only in tuned: {only_tuned[:5]}{' ...' if len(only_tuned) > 5 else ''}")
        if shapes:
            problems.append(f"shape mismatch: {shapes[:5]}{' ...' if len(shapes) > 5 else ''}")
        raise ValueError("WiSE-FT needs the base and tuned models to share one architecture; " + "; ".join(problems))


def wise_state_dict(
    base_state: dict[str, torch.Tensor], tuned_state: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """Interpolated state dict; non-float tensors (e.g. integer `position_ids` buffers) come from the tuned model."""
    check_same_architecture(base_state, tuned_state)
    out = {}
    for key, tuned in tuned_state.items():
        base = base_state[key].to(tuned.device)
        if tuned.is_floating_point():
            # Interpolate in fp32 so bf16/fp16 checkpoints do not lose the small differences fine-tuning made.
            out[key] = ((1.0 - alpha) * base.float() + alpha * tuned.float()).to(tuned.dtype)
        else:
            out[key] = tuned.clone()
    return out


def wise_interpolate(base_model: torch.nn.Module, tuned_model: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """A new model (a copy of `tuned_model`) with weights (1 - alpha) * base + alpha * tuned; inputs are untouched."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base_cfg, tuned_cfg = getattr(base_model, "config", None), getattr(tuned_model, "config", None)
    if type(base_model) is not type(tuned_model) or getattr(base_cfg, "model_type", None) != getattr(
        tuned_cfg, "model_type", None
    ):
        raise ValueError(
            f"WiSE-FT needs the base and tuned models to share one architecture; got {type(base_model).__name__} "
            f"and {type(tuned_model).__name__}"
        )
    state = wise_state_dict(base_model.state_dict(), tuned_model.state_dict(), alpha)
    model = copy.deepcopy(tuned_model)
    model.load_state_dict(state)
    return model.eval()


# Config fields that decide parameter shapes; differing values make the weights impossible to interpolate.
_SHAPE_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
    "image_size",
    "patch_size",
)


def check_wise_configs(model_paths: list[str]) -> None:
    """Fail fast, before any model is evaluated, when the checkpoints cannot be interpolated with the first one."""
    from transformers import AutoConfig

    def shape_of(path: str) -> dict:
        config = AutoConfig.from_pretrained(path)
        shape = {"model_type": config.model_type, "projection_dim": getattr(config, "projection_dim", None)}
        for tower in ("text_config", "vision_config"):
            sub = getattr(config, tower, None)
            shape.update({f"{tower}.{f}": getattr(sub, f, None) for f in _SHAPE_FIELDS if sub is not None})
        return shape

    base = shape_of(model_paths[0])
    for path in model_paths[1:]:
        other = shape_of(path)
        diff = {k: (base.get(k), other.get(k)) for k in base.keys() | other.keys() if base.get(k) != other.get(k)}
        if diff:
            raise ValueError(
                f"--wise_alpha: {path} does not share the architecture of the base model {model_paths[0]}; "
                f"differing config fields (base, tuned): {dict(sorted(diff.items()))}"
            )
