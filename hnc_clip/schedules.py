"""Schedules for the hard-negative weight λ, by optimizer step.

The seed thesis raised λ in a staircase during training (`step`); a linear warm-up is the smoother variant.
Each schedule is `fn(step, args) -> λ`, picked by name from `SCHEDULES` (`--hard_negative_schedule`). Every value
is clipped to the span between `--hard_negative_weight_min` and `--hard_negative_weight`, and never below 0: a
negative λ would reward the model for preferring the hard negative.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class ScheduleArgs(Protocol):
    hard_negative_weight: float
    hard_negative_weight_min: float
    hard_negative_warmup_steps: int
    hard_negative_step_size: float
    hard_negative_step_every: int


def clip_weight(value: float, args: ScheduleArgs) -> float:
    """`value` within [min(λ_min, λ), max(λ_min, λ)] and ≥ 0."""
    low, high = sorted((args.hard_negative_weight_min, args.hard_negative_weight))
    return max(0.0, low, min(value, high))


def constant(step: int, args: ScheduleArgs) -> float:
    """λ(t) = λ."""
    return clip_weight(args.hard_negative_weight, args)


def linear(step: int, args: ScheduleArgs) -> float:
    """λ(t) = λ_min + (λ − λ_min) · min(1, t / warmup); λ from the start when warmup is 0."""
    if args.hard_negative_warmup_steps <= 0:
        return clip_weight(args.hard_negative_weight, args)
    frac = min(1.0, max(0, step) / args.hard_negative_warmup_steps)
    value = args.hard_negative_weight_min + (args.hard_negative_weight - args.hard_negative_weight_min) * frac
    return clip_weight(value, args)


def step(step: int, args: ScheduleArgs) -> float:
    """λ(t) = min(λ, λ_min + size · ⌊t / every⌋): the thesis's staircase."""
    stairs = max(0, step) // max(1, args.hard_negative_step_every)
    value = min(args.hard_negative_weight, args.hard_negative_weight_min + args.hard_negative_step_size * stairs)
    return clip_weight(value, args)


SCHEDULES: dict[str, Callable[[int, ScheduleArgs], float]] = {"constant": constant, "linear": linear, "step": step}
