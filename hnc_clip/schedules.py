"""Schedules for the hard-negative weight λ, by optimizer step.

The seed thesis raised λ in a staircase during training (`step`); a linear warm-up is the smoother variant.
Each schedule is `fn(step, args) -> λ`, picked by name from `SCHEDULES` (`--hard_negative_schedule`).
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


def constant(step: int, args: ScheduleArgs) -> float:
    """λ(t) = λ."""
    return args.hard_negative_weight


def linear(step: int, args: ScheduleArgs) -> float:
    """λ(t) = λ_min + (λ − λ_min) · min(1, t / warmup); λ from the start when warmup is 0."""
    if args.hard_negative_warmup_steps <= 0:
        return args.hard_negative_weight
    frac = min(1.0, step / args.hard_negative_warmup_steps)
    return args.hard_negative_weight_min + (args.hard_negative_weight - args.hard_negative_weight_min) * frac


def step(step: int, args: ScheduleArgs) -> float:
    """λ(t) = min(λ, λ_min + size · ⌊t / every⌋): the thesis's staircase."""
    stairs = step // max(1, args.hard_negative_step_every)
    return min(args.hard_negative_weight, args.hard_negative_weight_min + args.hard_negative_step_size * stairs)


SCHEDULES: dict[str, Callable[[int, ScheduleArgs], float]] = {"constant": constant, "linear": linear, "step": step}
