"""The ELBO family: the VAE (beta = 1), beta-VAE, KL warm-up (a schedule on beta), free bits and soft free bits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torch.distributions import Distribution

from vae_experiments.errors import ConfigError
from vae_experiments.model import VAE, kl_per_dim
from vae_experiments.objectives.base import Objective
from vae_experiments.schedules import Schedule

if TYPE_CHECKING:
    from vae_experiments.module import VAEModule


class ELBO(Objective):
    """Minimise -(E_q[log p(x|z)] - beta * KL_fb), averaged over the batch (nats per example).

    Free bits (Kingma et al., 2016, Eq. 15), with lambda nats per group:

        KL_fb = sum_j max(lambda, E_{x in batch}[KL(q(z_j|x) || p(z_j))])

    ``free_bits_groups``: ``dim`` (one group per latent dimension; needs a factorised posterior and prior, so a
    closed-form KL per dimension: refused before training otherwise) or ``all`` (one group: the whole KL, which also
    works with the Monte-Carlo KL of an AF prior or an IAF posterior). Free bits and beta change only the training
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

    def check(self, model: VAE, datamodule: Any) -> None:
        """Free bits per dimension need KL(q(z_j|x) || p(z_j)) per dimension, which an AF prior or an IAF posterior
        does not have (their KL is one Monte-Carlo number per example)."""
        if self.free_bits_groups != "dim" or (not callable(self.free_bits) and self.free_bits <= 0):
            return
        x = torch.zeros(2, *model.data_shape)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            factorised = kl_per_dim(model.encode(x), model.prior) is not None
        model.train(was_training)
        if not factorised:
            raise ConfigError(
                f"free bits per dimension need a KL per latent dimension, which {type(model.posterior).__name__} with "
                f"{type(model.prior).__name__} has not (Monte-Carlo KL): set objective.free_bits_groups=all"
            )

    def kl_term(self, model: VAE, q: Distribution, kl: Tensor, step: int) -> Tensor:
        """The KL of the training surrogate (before beta): free bits when lambda > 0, else the batch-mean KL."""
        lam = self.weight(self.free_bits, step)
        if lam <= 0:
            return kl.mean()
        if self.free_bits_groups == "all":
            return kl.mean().clamp(min=lam)
        per_dim = kl_per_dim(q, model.prior)
        if per_dim is None:
            raise ValueError(
                "free bits per dimension need a factorised posterior and prior: set objective.free_bits_groups=all"
            )
        return per_dim.mean(0).clamp(min=lam).sum()

    def loss(self, model: VAE, x: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        t = model.terms(x, self.samples)
        recon = t.log_px_z.mean(0)
        kl = t.kl if t.analytic_kl else t.kl.mean(0)
        beta = self.weight(self.beta, step)
        loss = -recon.mean() + beta * self.kl_term(model, t.q, kl, step)
        return loss, {
            "loss": loss.detach(),
            "elbo": (recon - kl).mean().detach(),
            "recon": -recon.mean().detach(),
            "kl": kl.mean().detach(),
            "beta": torch.tensor(beta),
        }


class SoftFreeBits(ELBO):
    """VLAE's soft free bits (Chen et al. 2017, Appendix C; REFERENCE 3.2): minimise -(E_q[log p(x|z)] - gamma KL),
    0 < gamma <= 1, with gamma adapted after every optimiser step from that step's batch-mean KL:

        KL > lambda (1 + threshold)  ->  gamma <- min(1, gamma (1 + rate))
        KL < lambda                  ->  gamma <- gamma (1 - rate)

    (``free_bits`` = lambda, nats per example for the whole KL; ``threshold`` 0.05 and ``rate`` 0.1 as in the paper).
    gamma is a buffer, so checkpoints carry it (with weight averaging, the checkpoint's ``state_dict`` holds the
    averaged copy and ``current_model_state`` the live one). The logged ``elbo`` is the true bound.
    """

    def __init__(
        self,
        free_bits: float = 0.0,
        threshold: float = 0.05,
        rate: float = 0.1,
        gamma_init: float = 1.0,
        beta: float | Schedule = 1.0,
        samples: int = 1,
    ) -> None:
        super().__init__(beta=beta, free_bits=free_bits, free_bits_groups="all", samples=samples)
        if not 0 < gamma_init <= 1:
            raise ValueError(f"objective.gamma_init must be in (0, 1], got {gamma_init}")
        if not 0 < rate < 1 or threshold < 0:
            raise ValueError(f"objective.rate must be in (0, 1) and threshold >= 0, got {rate}, {threshold}")
        self.threshold, self.rate = threshold, rate
        self.register_buffer("gamma", torch.tensor(float(gamma_init)))
        self._last_kl: Tensor | None = None

    def kl_term(self, model: VAE, q: Distribution, kl: Tensor, step: int) -> Tensor:
        self._last_kl = kl.detach().mean()
        return self.gamma * kl.mean()

    def update_gamma(self, kl: Tensor | float) -> None:
        """One step of the adaptive rule above, from the batch-mean KL in nats; on the device, with no host read."""
        lam = float(self.free_bits)
        kl = torch.as_tensor(kl, dtype=self.gamma.dtype, device=self.gamma.device)
        grown = (self.gamma * (1 + self.rate)).clamp(max=1.0)
        shrunk = self.gamma * (1 - self.rate)
        self.gamma.copy_(torch.where(kl > lam * (1 + self.threshold), grown, torch.where(kl < lam, shrunk, self.gamma)))

    def loss(self, model: VAE, x: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs = super().loss(model, x, step)
        return loss, {**logs, "gamma": self.gamma.detach().clone()}

    def on_train_batch_end(self, module: VAEModule, logs: dict[str, Tensor] | None = None) -> None:
        if self._last_kl is not None:
            self.update_gamma(self._last_kl)
