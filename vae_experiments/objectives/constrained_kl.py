"""SOS-VAE's KL-constrained objective (Langley et al., TMLR 2022; docs/sos_vae.md#objective): a damped Lagrangian.

The modified differential method of multipliers (Platt & Barr, 1988) on the equality constraint KL = kappa per image,
with the authors' sums over the batch.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor

from vae_experiments.contracts import optional
from vae_experiments.errors import ConfigError
from vae_experiments.model import VAE
from vae_experiments.objectives.base import Objective, StepContext, StepOutput


class ConstrainedKL(Objective):
    """Per batch of B images, with one posterior sample each and sums over the batch (the authors' convention):

        R = -sum_b log p(x_b | z_b),   KL = sum_b KL(q(z|x_b) || p(z)),   c = KL - kappa B
        L = R + (lambda - delta) c,    delta = damping (kappa B - KL), held constant (detached)

    so the weights follow grad R + (lambda + damping c) grad KL: a two-sided pull of KL towards kappa B. After every
    optimiser step the multiplier ascends, lambda <- max(0, lambda + lambda_lr c) (averaged over DDP ranks).

    ``target_entropy`` (nats per image, optional): the entropy H[p(x|z)] summed over the batch is pinned to
    ``target_entropy`` B in the same way, with its own multiplier. ``mean_only_epochs``: for the first epochs only the
    likelihood's mean is trained (its spread channels are detached; ``likelihood.detach_spread``).

    The returned scalar is L / B (nats per image): Adam's steps do not depend on that scale, the multipliers' do,
    so they see the sums. Both multipliers are buffers: checkpoints carry them and a resume continues exactly.
    """

    def __init__(
        self,
        kappa: float = 45.0,
        damping: float = 10.0,
        lambda_lr: float = 1.0,
        target_entropy: float | None = None,
        mean_only_epochs: int = 0,
    ) -> None:
        super().__init__()
        if kappa < 0 or damping < 0 or lambda_lr <= 0 or mean_only_epochs < 0:
            raise ValueError(
                "objective.kappa, damping and mean_only_epochs must be >= 0 and lambda_lr > 0, got "
                f"{kappa}, {damping}, {mean_only_epochs}, {lambda_lr}"
            )
        self.kappa = kappa
        self.damping = damping
        self.lambda_lr = lambda_lr
        self.target_entropy = target_entropy
        self.mean_only_epochs = mean_only_epochs
        self.register_buffer("lambda_kl", torch.zeros(()))
        self.register_buffer("lambda_entropy", torch.zeros(()))

    def refuse_unsupported(self, model: VAE, datamodule: Any) -> None:
        if self.mean_only_epochs and (model.autoregressive or optional(model.likelihood, "detach_spread") is None):
            raise ConfigError(
                f"objective.mean_only_epochs needs a likelihood whose spread can be frozen and a non-autoregressive "
                f"decoder, not {type(model.likelihood).__name__} with {type(model.decoder).__name__}: "
                "use likelihood=low_rank_gaussian or objective.mean_only_epochs=0"
            )
        if self.target_entropy is not None:
            with torch.no_grad():
                px = model.likelihood(torch.zeros(1, model.likelihood.num_params(model.data_shape[0]), 2, 2))
                try:
                    px.entropy()
                except NotImplementedError:
                    raise ConfigError(
                        f"objective.target_entropy needs the entropy of p(x|z), which {type(px).__name__} has not: "
                        "use likelihood=low_rank_gaussian or gaussian, or objective.target_entropy=null"
                    ) from None

    def _damped(self, total: Tensor, target: float, multiplier: Tensor) -> tuple[Tensor, Tensor]:
        """(lambda - delta) c with delta = damping (target - total) detached; and c itself, detached."""
        c = total - target
        delta = self.damping * (target - total.detach())
        return (multiplier - delta) * c, c.detach()

    def _loss(self, model: VAE, x: Tensor, mean_only: bool) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """The scaled Lagrangian, its logs, and the constraint values c the multipliers ascend on."""
        batch = x.shape[0]
        latent = model.latent(x)
        z = latent.z[0]
        px = model.likelihood(model.likelihood.detach_spread(model.decoder(z))) if mean_only else model.decode(z, x)
        recon, kl_sum = -px.log_prob(x).sum(), latent.kl.sum()
        kl_term, c_kl = self._damped(kl_sum, self.kappa * batch, self.lambda_kl)
        total = recon + kl_term
        logs = {
            "recon": recon.detach() / batch,
            "kl": kl_sum.detach() / batch,
            "elbo": -(recon + kl_sum).detach() / batch,
            "lambda_kl": self.lambda_kl.detach().clone(),
        }
        constraints = {"kl": c_kl}
        if self.target_entropy is not None:
            entropy = px.entropy().sum()
            entropy_term, constraints["entropy"] = self._damped(
                entropy, self.target_entropy * batch, self.lambda_entropy
            )
            total = total + entropy_term
            logs |= {"entropy": entropy.detach() / batch, "lambda_entropy": self.lambda_entropy.detach().clone()}
        loss = total / batch
        logs["loss"] = loss.detach()
        return loss, logs, constraints

    def loss(self, model: VAE, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs, _ = self._loss(model, x, mean_only=False)
        return loss, logs

    def step_variant(self, epoch: int) -> Hashable:
        return epoch < self.mean_only_epochs

    def training_step(self, ctx: StepContext, x: Tensor) -> StepOutput:
        loss, logs, constraints = self._loss(ctx.model, x, mean_only=ctx.epoch < self.mean_only_epochs)
        return StepOutput(loss, logs, state=constraints)

    def after_update(self, ctx: StepContext, out: StepOutput) -> None:
        """The multipliers' ascent step, after the weights' step: lambda <- max(0, lambda + lambda_lr c)."""
        for name, multiplier in (("kl", self.lambda_kl), ("entropy", self.lambda_entropy)):
            if name in out.state:
                multiplier.add_(self.lambda_lr * ctx.reduce_mean(out.state[name])).clamp_(min=0)
