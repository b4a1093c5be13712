"""The ELBO family: the VAE (beta = 1), beta-VAE, KL warm-up (a schedule on beta) and free bits."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from vae_experiments.model import VAE, kl_per_dim
from vae_experiments.objectives.base import Objective
from vae_experiments.schedules import Schedule


class ELBO(Objective):
    """Minimise -(E_q[log p(x|z)] - beta * KL_fb), averaged over the batch (nats per example).

    Free bits (Kingma et al., 2016, Eq. 15), with lambda nats per group:

        KL_fb = sum_j max(lambda, E_{x in batch}[KL(q(z_j|x) || p(z_j))])

    ``free_bits_groups``: ``dim`` (one group per latent dimension; needs a factorised posterior and prior) or ``all``
    (one group: the whole KL, which also works with Monte-Carlo KLs). Free bits and beta change only the training
    surrogate: the logged ``elbo`` is always the true bound (beta = 1, no free bits).
    """

    def __init__(
        self,
        beta: float | Schedule = 1.0,
        free_bits: float | Schedule = 0.0,
        free_bits_groups: Literal["dim", "all"] = "dim",
        samples: int = 1,
    ) -> None:
        super().__init__()
        if free_bits_groups not in ("dim", "all"):
            raise ValueError(f"objective.free_bits_groups must be 'dim' or 'all', got {free_bits_groups!r}")
        if samples < 1:
            raise ValueError(f"objective.samples must be >= 1, got {samples}")
        self.beta = beta
        self.free_bits = free_bits
        self.free_bits_groups = free_bits_groups
        self.samples = samples

    def loss(self, model: VAE, x: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        t = model.terms(x, self.samples)
        recon = t.log_px_z.mean(0)
        kl = t.kl if t.analytic_kl else t.kl.mean(0)
        beta = self.weight(self.beta, step)
        lam = self.weight(self.free_bits, step)
        kl_train = self.free_bits_kl(model, t.q, kl, lam) if lam > 0 else kl.mean()
        loss = -recon.mean() + beta * kl_train
        return loss, {
            "loss": loss.detach(),
            "elbo": (recon - kl).mean().detach(),
            "recon": -recon.mean().detach(),
            "kl": kl.mean().detach(),
            "beta": torch.tensor(beta),
        }

    def free_bits_kl(self, model: VAE, q, kl: Tensor, lam: float) -> Tensor:
        if self.free_bits_groups == "all":
            return kl.mean().clamp(min=lam)
        per_dim = kl_per_dim(q, model.prior)
        if per_dim is None:
            raise ValueError(
                "free bits per dimension need a factorised posterior and prior: set objective.free_bits_groups=all"
            )
        return per_dim.mean(0).clamp(min=lam).sum()
