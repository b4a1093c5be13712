"""The ELBO family: the VAE (beta = 1), beta-VAE, KL warm-up (a schedule on beta), free bits and soft free bits."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torch.distributions import Distribution

from vae_experiments.errors import ConfigError
from vae_experiments.model import VAE, kl_per_dim
from vae_experiments.objectives.base import Objective, StepContext, StepOutput, logged
from vae_experiments.schedules import Schedule


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
        self.scheduled("beta", beta)
        self.scheduled("free_bits", free_bits)
        # free bits are part of the step when set (a schedule, or a positive lambda): a structural choice, so that
        # the step never branches on a tensor's value
        self.uses_free_bits = callable(free_bits) or free_bits > 0
        self.free_bits_groups = free_bits_groups
        self.samples = samples

    def refuse_unsupported(self, model: VAE, datamodule: Any) -> None:
        """Free bits per dimension need KL(q(z_j|x) || p(z_j)) per dimension, which an AF prior or an IAF posterior
        does not have (their KL is one Monte-Carlo number per example)."""
        if self.free_bits_groups != "dim" or not self.uses_free_bits:
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

    def kl_term(self, model: VAE, q: Distribution, kl: Tensor, kl_mean: Tensor) -> Tensor:
        """The KL of the training surrogate (before beta): free bits when set, else the batch-mean KL ``kl_mean``."""
        if not self.uses_free_bits:
            return kl_mean
        if self.free_bits_groups == "all":
            return kl_mean.clamp(min=self.free_bits)
        per_dim = kl_per_dim(q, model.prior)
        if per_dim is None:
            raise ValueError(
                "free bits per dimension need a factorised posterior and prior: set objective.free_bits_groups=all"
            )
        return per_dim.mean(0).clamp(min=self.free_bits).sum()

    def loss(self, model: VAE, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        t = model.terms(x, self.samples)
        recon = t.log_px_z.mean(0).mean()
        kl = t.kl.mean()
        loss = -recon + self.beta * self.kl_term(model, t.q, t.kl, kl)
        return loss, {
            "loss": loss.detach(),
            "elbo": (recon - kl).detach(),
            "recon": -recon.detach(),
            "kl": kl.detach(),
            "beta": logged(self.beta),
        }


class SoftFreeBits(ELBO):
    """VLAE's soft free bits (Chen et al. 2017, Appendix C; docs/vlae.md#objective): minimise
    -(E_q[log p(x|z)] - gamma KL), 0 < gamma <= 1, with gamma adapted after every optimiser step from that step's
    batch-mean KL:

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
        self.lam = float(free_bits)
        self.threshold, self.rate = threshold, rate
        self.register_buffer("gamma", torch.tensor(float(gamma_init)))

    def kl_term(self, model: VAE, q: Distribution, kl: Tensor, kl_mean: Tensor) -> Tensor:
        return self.gamma * kl_mean

    def update_gamma(self, kl: Tensor | float) -> None:
        """One step of the adaptive rule above, from the batch-mean KL in nats; on the device, with no host read."""
        kl = torch.as_tensor(kl, dtype=self.gamma.dtype, device=self.gamma.device)
        grown = (self.gamma * (1 + self.rate)).clamp(max=1.0)
        shrunk = self.gamma * (1 - self.rate)
        lam = self.lam
        self.gamma.copy_(torch.where(kl > lam * (1 + self.threshold), grown, torch.where(kl < lam, shrunk, self.gamma)))

    def loss(self, model: VAE, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        loss, logs = super().loss(model, x)
        return loss, {**logs, "gamma": self.gamma.detach().clone()}

    def training_step(self, ctx: StepContext, x: Tensor) -> StepOutput:
        loss, logs = self.loss(ctx.model, x)
        return StepOutput(loss, logs, state={"kl": logs["kl"]})

    def after_update(self, ctx: StepContext, out: StepOutput) -> None:
        self.update_gamma(out.state["kl"])
