"""SOS-VAE's KL-constrained objective (Langley et al., TMLR 2022; REFERENCE.md 2.3): a damped Lagrangian.

The modified differential method of multipliers (Platt & Barr, 1988) on the equality constraint KL = kappa per image,
with the authors' sums over the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vae_experiments.errors import ConfigError
from vae_experiments.model import VAE, closed_form_kl
from vae_experiments.objectives.base import Objective

if TYPE_CHECKING:
    from vae_experiments.module import VAEModule


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
        self._pending: tuple[Tensor, Tensor | None] | None = None

    def check(self, model: VAE, datamodule: Any) -> None:
        if self.mean_only_epochs and (model.autoregressive or not hasattr(model.likelihood, "detach_spread")):
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

    def _loss(self, model: VAE, x: Tensor, mean_only: bool) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor | None]:
        batch = x.shape[0]
        q = model.encode(x)
        z, log_qz = model.sample_posterior(q, 1)
        if mean_only:
            px = model.likelihood(model.likelihood.detach_spread(model.decoder(z[0])))
        else:
            px = model.decode(z[0], x)
        log_px = px.log_prob(x)
        kl = closed_form_kl(q, model.prior)
        if kl is None:
            kl = log_qz[0] - model.log_prior(z)[0]
        recon, kl_sum = -log_px.sum(), kl.sum()
        kl_term, c_kl = self._damped(kl_sum, self.kappa * batch, self.lambda_kl)
        total = recon + kl_term
        logs = {
            "recon": recon.detach() / batch,
            "kl": kl_sum.detach() / batch,
            "elbo": -(recon + kl_sum).detach() / batch,
            "lambda_kl": self.lambda_kl.detach().clone(),
        }
        c_entropy = None
        if self.target_entropy is not None:
            entropy = px.entropy().sum()
            entropy_term, c_entropy = self._damped(entropy, self.target_entropy * batch, self.lambda_entropy)
            total = total + entropy_term
            logs |= {"entropy": entropy.detach() / batch, "lambda_entropy": self.lambda_entropy.detach().clone()}
        loss = total / batch
        logs["loss"] = loss.detach()
        return loss, logs, c_kl, c_entropy

    def loss(self, model: VAE, x: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs, _, _ = self._loss(model, x, mean_only=False)
        return loss, logs

    def training_step(self, module: VAEModule, x: Tensor) -> Tensor:
        mean_only = module.current_epoch < self.mean_only_epochs
        loss, logs, c_kl, c_entropy = self._loss(module.model, x, mean_only)
        self._pending = (c_kl, c_entropy)
        module.log_metrics("train", logs, batch_size=x.shape[0])
        return loss

    def on_train_batch_end(self, module: VAEModule, logs: dict[str, Tensor] | None = None) -> None:
        """The multipliers' ascent step, after the weights' step: lambda <- max(0, lambda + lambda_lr c)."""
        if self._pending is None:
            return
        trainer = getattr(module, "_trainer", None)  # None outside trainer.fit (a bare step in a test)
        reduce = trainer.strategy.reduce if trainer is not None else (lambda t, reduce_op: t)
        for multiplier, c in zip((self.lambda_kl, self.lambda_entropy), self._pending, strict=True):
            if c is not None:
                multiplier.add_(self.lambda_lr * reduce(c, reduce_op="mean")).clamp_(min=0)
        self._pending = None
