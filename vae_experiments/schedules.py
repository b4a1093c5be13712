"""Schedules for any scalar weight (beta, beta_neg, a free-bits lambda, ...), chosen from ``conf/schedule``.

Use: ``+schedule@objective.beta=linear objective.beta.end=4 objective.beta.steps=2000``.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable


@runtime_checkable
class Schedule(Protocol):
    def __call__(self, step: int) -> float: ...


def value_at(value: float | Schedule, step: int) -> float:
    """A float stays itself; a schedule is evaluated at the optimiser step."""
    return float(value(step)) if callable(value) else float(value)


class Constant:
    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, step: int) -> float:
        return self.value


class Linear:
    """``start`` to ``end`` over ``steps`` steps after ``delay``, then ``end`` (KL warm-up: start 0, end 1)."""

    def __init__(self, start: float, end: float, steps: int, delay: int = 0) -> None:
        if steps <= 0:
            raise ValueError(f"schedule steps must be positive, got {steps}")
        self.start, self.end, self.steps, self.delay = start, end, steps, delay

    def __call__(self, step: int) -> float:
        t = min(max(step - self.delay, 0) / self.steps, 1.0)
        return self.start + t * (self.end - self.start)


class Cosine(Linear):
    """Half-cosine from ``start`` to ``end`` over ``steps`` steps after ``delay``."""

    def __call__(self, step: int) -> float:
        t = min(max(step - self.delay, 0) / self.steps, 1.0)
        return self.end + 0.5 * (self.start - self.end) * (1 + math.cos(math.pi * t))


class Cyclic:
    """Cyclical annealing (Fu et al., 2019): each ``period`` rises linearly from ``start`` to ``end`` during the first
    ``ratio`` of the period, then holds ``end``."""

    def __init__(self, start: float, end: float, period: int, ratio: float = 0.5) -> None:
        if period <= 0 or not 0 < ratio <= 1:
            raise ValueError(f"cyclic schedule needs period > 0 and 0 < ratio <= 1, got {period}, {ratio}")
        self.start, self.end, self.period, self.ratio = start, end, period, ratio

    def __call__(self, step: int) -> float:
        t = min((step % self.period) / (self.period * self.ratio), 1.0)
        return self.start + t * (self.end - self.start)
