"""The objective contract: an objective owns the training step, the module only logs and checkpoints.

An ELBO-family objective implements ``loss`` and is driven by Lightning's automatic optimisation. An objective with
its own optimisation scheme (Soft-IntroVAE) sets ``automatic_optimization = False``, returns its optimisers from
``configure_optimizers`` and overrides ``training_step``. State an objective must carry across a resume (a Lagrange
multiplier, an adaptive weight) lives in buffers, so checkpoints hold it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from torch.optim import Optimizer

from vae_experiments.schedules import Schedule, value_at

if TYPE_CHECKING:
    from vae_experiments.model import VAE
    from vae_experiments.module import VAEModule

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]


class Objective(nn.Module):
    """Base class. Subclasses implement ``loss`` (automatic optimisation) or override ``training_step``."""

    automatic_optimization: bool = True
    # the fix the runner suggests when this objective's training loss turns non-finite
    non_finite_advice: str = "lower the learning rate, or add gradient clipping: trainer.gradient_clip_val=1.0"

    def weight(self, value: float | Schedule, step: int) -> float:
        """A scalar hyper-parameter at ``step``: a constant, or a schedule from ``conf/schedule``."""
        return value_at(value, step)

    def loss(self, model: VAE, x: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the scalar to minimise (nats per example, batch mean) and detached tensors to log."""
        raise NotImplementedError

    def configure_optimizers(self, model: VAE, optimizer: OptimizerFactory) -> Any:
        return optimizer(model.parameters())

    def training_step(self, module: VAEModule, x: Tensor) -> Tensor | None:
        loss, logs = self.loss(module.model, x, module.global_step)
        module.log_metrics("train", logs, batch_size=x.shape[0])
        return loss

    def on_train_batch_end(self, module: VAEModule, logs: dict[str, Tensor] | None = None) -> None:
        """Hook after the optimiser step (a Lagrange multiplier's ascent step goes here)."""
