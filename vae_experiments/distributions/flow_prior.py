"""Autoregressive-flow prior p(z) (VLAE, Chen et al. 2017, Sec. 3.2 / Eqs. 12-14).

    eps ~ u = N(0, I),  z = f(eps),  z_i = eps_i sigma_i(z_<i) + mu_i(z_<i)          (sampling: sequential)
    eps_i = (z_i - mu_i(z_<i)) / sigma_i(z_<i),  log p(z) = log u(eps) - sum_i log sigma_i (density: parallel)

K such steps are stacked (z = f_K(...f_1(eps))), each a MADE, the variable order reversed between steps.
``mean_only`` (sigma = 1, log-det 0) is VLAE's binary setup. Otherwise log sigma_i = 5 tanh(a_i / 5) for the MADE's
second output a_i, the soft clamp the IAF posterior's steps share (``flow_scale``): a diverging MADE cannot make
sigma over- or underflow.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vae_experiments.distributions.dtypes import at_least_float32
from vae_experiments.distributions.flow_scale import soft_clamp_log_scale
from vae_experiments.nets.made import MADE


def standard_normal_log_prob(eps: Tensor) -> Tensor:
    """log N(eps; 0, I) summed over the last dimension."""
    return -0.5 * (eps.pow(2).sum(-1) + eps.shape[-1] * math.log(2 * math.pi))


class AutoregressiveFlowPrior(nn.Module):
    """``prior=af``: ``steps`` MADE flow steps (``hidden_layers`` x ``hidden_units``, ReLU), ``mean_only``
    or affine (log sigma = the soft-clamped second output of the MADE). Defaults: VLAE's binary setup, "4 steps,
    3-layer MADE, 640 units", read as 2 hidden layers (3 weight layers; docs/vlae.md#where-the-authors-code-differs)."""

    def __init__(
        self,
        latent_dim: int,
        steps: int = 4,
        hidden_layers: int = 2,
        hidden_units: int = 640,
        mean_only: bool = True,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.mean_only = mean_only
        forward_order = torch.arange(latent_dim)
        self.mades = nn.ModuleList(
            MADE(
                latent_dim,
                n_params=1 if mean_only else 2,
                hidden_layers=hidden_layers,
                hidden_units=hidden_units,
                order=forward_order if k % 2 == 0 else forward_order.flip(0),
            )
            for k in range(steps)
        )
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def _shift_log_scale(self, k: int, z: Tensor) -> tuple[Tensor, Tensor]:
        out = self.mades[k](z)
        out = at_least_float32(out)  # out of autocast's bf16: the log-det sums in fp32
        mu = out[..., 0]
        return mu, torch.zeros_like(mu) if self.mean_only else soft_clamp_log_scale(out[..., 1])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """f^{-1}(z) in one parallel pass per step, and log|det J_{f^{-1}}(z)| = -sum_i log sigma_i."""
        eps, log_det = z, z.new_zeros(z.shape[:-1])
        for k in reversed(range(len(self.mades))):
            mu, log_sigma = self._shift_log_scale(k, eps)
            eps = (eps - mu) * torch.exp(-log_sigma)
            log_det = log_det - log_sigma.sum(-1)
        return eps, log_det

    def forward_flow(self, eps: Tensor) -> Tensor:
        """z = f(eps): per step d passes of z <- eps sigma(z) + mu(z); pass t fixes the t-th variable."""
        z = eps
        for k in range(len(self.mades)):
            x = torch.zeros_like(z)
            for _ in range(self.latent_dim):
                mu, log_sigma = self._shift_log_scale(k, x)
                x = z * torch.exp(log_sigma) + mu
            z = x
        return z

    def log_prob(self, z: Tensor) -> Tensor:
        eps, log_det = self.inverse(z)
        return standard_normal_log_prob(eps) + log_det

    def sample(self, n: int) -> Tensor:
        return self.forward_flow(self._zero.new_empty(n, self.latent_dim).normal_())

    def distribution(self) -> Distribution | None:
        return None
