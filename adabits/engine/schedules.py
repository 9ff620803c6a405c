"""The original AdaBits code's learning-rate schedules as pure functions: iteration -> multiplier of the base lr.

Per-iteration schedules change every step; per-epoch ones read the epoch of the iteration, so they
change exactly at epoch boundaries. Linear warmup over the first W iterations applies to all of them.
Used through torch.optim.lr_scheduler.LambdaLR, stepped once per optimizer step.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ScheduleSpec:
    """Everything a schedule may depend on; iterations are optimizer steps."""

    iters_per_epoch: int
    num_epochs: int
    warmup_epochs: float = 0.0
    warmup_start: float = 0.1
    milestones: tuple[float, ...] = (100, 150)
    gamma: float = 0.1
    exp_gamma: float = 0.98
    exp_period: int = 1

    @property
    def total_iters(self) -> int:
        return self.iters_per_epoch * self.num_epochs

    @property
    def warmup_iters(self) -> int:
        return min(self.total_iters, round(self.warmup_epochs * self.iters_per_epoch))

    def epoch_of(self, i: int) -> int:
        return i // self.iters_per_epoch

    def progress(self, i: int) -> float:
        """(i - W) / (N - W), the fraction of the post-warmup iterations done."""
        w, n = self.warmup_iters, self.total_iters
        return (i - w) / max(1, n - w)

    def epoch_progress(self, i: int) -> float:
        """(e - We) / (E - We) on whole epochs, for the per-epoch schedules."""
        we = self.warmup_epochs
        return (self.epoch_of(i) - we) / max(1e-12, self.num_epochs - we)


Schedule = Callable[[ScheduleSpec, int], float]
SCHEDULES: dict[str, Schedule] = {}


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    def deco(fn: Schedule) -> Schedule:
        SCHEDULES[name] = fn
        return fn

    return deco


@register_schedule("constant")
def constant(s: ScheduleSpec, i: int) -> float:
    return 1.0


@register_schedule("multistep")
def multistep(s: ScheduleSpec, i: int) -> float:
    """gamma ** (number of milestones passed), milestones in epochs, changing at epoch boundaries."""
    return s.gamma ** bisect_right(list(s.milestones), s.epoch_of(i))


@register_schedule("multistep_iter")
def multistep_iter(s: ScheduleSpec, i: int) -> float:
    """As multistep, but fractional milestones (in epochs) take effect at the exact iteration."""
    return s.gamma ** bisect_right(list(s.milestones), i / s.iters_per_epoch)


@register_schedule("exp_decaying")
def exp_decaying(s: ScheduleSpec, i: int) -> float:
    """x exp_decaying_lr_gamma every exp_decaying_period epochs."""
    return s.exp_gamma ** (s.epoch_of(i) // s.exp_period)


@register_schedule("exp_decaying_iter")
def exp_decaying_iter(s: ScheduleSpec, i: int) -> float:
    return math.exp(-8.0 * s.progress(i))


@register_schedule("linear_decaying")
def linear_decaying(s: ScheduleSpec, i: int) -> float:
    """1 - (e - We)/(E - We) per epoch: decays once (the original subtracted a second time per step)."""
    return 1.0 - s.epoch_progress(i)


@register_schedule("cos_annealing")
def cos_annealing(s: ScheduleSpec, i: int) -> float:
    return (1.0 + math.cos(math.pi * s.epoch_progress(i))) / 2.0


@register_schedule("cos_annealing_iter")
def cos_annealing_iter(s: ScheduleSpec, i: int) -> float:
    return (1.0 + math.cos(math.pi * s.progress(i))) / 2.0


def multiplier(name: str, spec: ScheduleSpec, i: int) -> float:
    """The lr multiplier at iteration i: linear warmup from warmup_start to 1 over W, then the schedule."""
    w = spec.warmup_iters
    if i < w:
        return spec.warmup_start + (1.0 - spec.warmup_start) * i / w
    return SCHEDULES[name](spec, i)
