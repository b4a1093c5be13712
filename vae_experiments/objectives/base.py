"""The objective contract: an objective owns the training step; the module around it logs and checkpoints.

An objective sees a ``StepContext`` (the model, the step and epoch, its optimisers, ``backward`` and the non-finite
guard), never the LightningModule, and returns a ``StepOutput``: the loss (when the runner is to apply the update) and
the values to log. So an objective is testable with a plain context, and its step is a pure function of the batch, the
weights and its buffers, which is what whole-step capture on a GPU needs (``vae_experiments.capture``).

- An ELBO-family objective implements ``loss(model, x)``; the default ``training_step`` returns it and the runner
  applies the update (Lightning's automatic optimisation, or the captured step).
- An objective with its own optimisation scheme (Soft-IntroVAE) sets ``automatic_optimization = False``, returns its
  optimisers from ``configure_optimizers`` and overrides ``training_step``, calling ``ctx.backward`` and stepping
  ``ctx.optimizers`` itself (``StepOutput.loss`` is then ``None``).
- ``after_update`` runs after the optimiser steps of every training batch (a Lagrange multiplier's ascent step).

State an objective must carry across a resume (a Lagrange multiplier, an adaptive weight) lives in buffers, so
checkpoints hold it. Scheduled hyper-parameters (``scheduled``) are 0-d tensors set on the host before each step
(``set_step``) and only read inside it: the step never reads a value back, and a captured step sees each new value.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from vae_experiments.schedules import Schedule, value_at

if TYPE_CHECKING:
    from vae_experiments.model import VAE

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
# guard_finite(loss, *optimizers, detail=None): stop on a non-finite loss before ``optimizers`` apply it
FiniteGuard = Callable[..., None]


def _keep(t: Tensor) -> Tensor:
    return t


def backward(loss: Tensor, inputs: Sequence[Tensor] | None = None) -> None:
    """``loss.backward(inputs=...)`` (a method call, which ``torch.compile`` traces into the step's graph)."""
    if inputs is None:
        loss.backward()
    else:
        loss.backward(inputs=inputs)


def _no_guard(loss: Tensor, *optimizers: Optimizer, detail: Callable[[], str] | None = None) -> None:
    """A plain context's guard: nothing is checked."""


@dataclass
class StepContext:
    """What a training step may use. ``optimizers`` are in ``configure_optimizers`` order; ``backward(loss,
    inputs=None)`` back-propagates into the ``.grad`` of ``inputs`` (all leaves when ``None``; through the precision
    plugin under Lightning); ``guard_finite(loss, *optimizers, detail=None)``
    is called before ``optimizers`` apply ``loss``; ``reduce_mean`` averages a tensor over data-parallel ranks."""

    model: VAE
    optimizers: Sequence[Any] = ()
    global_step: int = 0
    epoch: int = 0
    backward: Callable[..., None] = backward
    guard_finite: FiniteGuard = _no_guard
    reduce_mean: Callable[[Tensor], Tensor] = _keep


@dataclass
class StepOutput:
    """``loss``: the scalar the runner minimises (nats per example), or ``None`` when the objective stepped its own
    optimisers. ``logs``: detached scalars to log. ``state``: tensors ``after_update`` needs (not logged)."""

    loss: Tensor | None
    logs: dict[str, Tensor]
    state: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class. Subclasses implement ``loss`` (the runner applies the update) or override ``training_step``."""

    automatic_optimization: bool = True
    # optimiser steps per training batch; schedules are evaluated at the batch count, global_step // this
    optimizer_steps_per_batch: int = 1
    # the fix the runner suggests when this objective's training loss turns non-finite
    non_finite_advice: str = "lower the learning rate, or add gradient clipping: trainer.gradient_clip_val=1.0"

    def __init__(self) -> None:
        super().__init__()
        self._schedules: dict[str, Schedule] = {}

    def scheduled(self, name: str, value: float | Schedule) -> None:
        """Declare a hyper-parameter that may follow a schedule (``conf/schedule``). A constant stays a float
        ``self.<name>``; a schedule makes ``self.<name>`` a 0-d tensor holding its value at the current batch (a
        non-persistent buffer, so it follows the model's device), set by ``set_step`` before each step."""
        if callable(value):
            self._schedules[name] = value
            self.register_buffer(name, torch.tensor(value_at(value, 0)), persistent=False)
        else:
            setattr(self, name, float(value))

    def set_step(self, global_step: int) -> None:
        """Set every scheduled hyper-parameter to its value at batch ``global_step // optimizer_steps_per_batch``."""
        batch = global_step // self.optimizer_steps_per_batch
        for name, schedule in self._schedules.items():
            getattr(self, name).fill_(value_at(schedule, batch))

    def scheduled_values(self) -> dict[str, Tensor]:
        """Every scheduled hyper-parameter at the current batch (the 0-d tensors ``set_step`` fills), by name: the
        runner logs them with the step's values, so a schedule's course is in the logs whatever the objective logs."""
        return {name: getattr(self, name) for name in self._schedules}

    def step_variant(self, epoch: int) -> Hashable:
        """What the step's Python control flow depends on besides the batch shape (a warm-up phase, say): a captured
        step is recorded once per variant. ``None``: the same step in every epoch."""
        return None

    def loss(self, model: VAE, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the scalar to minimise (nats per example, batch mean) and detached tensors to log."""
        raise NotImplementedError

    def configure_optimizers(self, model: VAE, optimizer: OptimizerFactory) -> Any:
        return optimizer(model.parameters())

    def training_step(self, ctx: StepContext, x: Tensor) -> StepOutput:
        loss, logs = self.loss(ctx.model, x)
        return StepOutput(loss, logs)

    def after_update(self, ctx: StepContext, out: StepOutput) -> None:
        """Runs after the optimiser steps of each training batch, with that batch's ``StepOutput``."""


def run_iteration(objective: Objective, ctx: StepContext, x: Tensor) -> StepOutput:
    """One whole training iteration without Lightning: the objective's step, the update when it returns a loss (one
    optimiser), then ``after_update``. The captured GPU step, the plain benchmark loop and the tests run this."""
    out = objective.training_step(ctx, x)
    if out.loss is not None:
        (optimizer,) = ctx.optimizers
        ctx.guard_finite(out.loss, optimizer)
        optimizer.zero_grad(set_to_none=True)
        ctx.backward(out.loss)
        optimizer.step()
    objective.after_update(ctx, out)
    return out


def logged(value: float | Tensor) -> Tensor:
    """A hyper-parameter as a value to log: a scheduled one is already a tensor, a constant becomes a host tensor."""
    return value if isinstance(value, Tensor) else torch.tensor(value)
