"""Autoregressive-flow prior p(z) (VLAE, Chen et al. 2017, Sec. 3.2 / Eqs. 12-14).

    eps ~ u = N(0, I),  z = f(eps),  z_i = eps_i sigma_i(z_<i) + mu_i(z_<i)          (sampling: sequential)
    eps_i = (z_i - mu_i(z_<i)) / sigma_i(z_<i),  log p(z) = log u(eps) - sum_i log sigma_i (density: parallel)

K such steps are stacked, each a MADE, the variable order reversed between steps. They are zuko masked
autoregressive transforms in zuko's direction, data to noise: ``steps`` make up f^{-1}, ``steps[0]`` applied to z
first; zuko's inverse gives the sequential sampling pass. ``mean_only`` (sigma = 1, log-det 0) is VLAE's
binary setup. Otherwise log sigma_i = 5 tanh(a_i / 5) for the MADE's second output a_i, the soft clamp the IAF
posterior's steps share (``flow_scale``): a diverging MADE cannot make sigma over- or underflow.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Transform
from zuko.transforms import AdditiveTransform

from vae_experiments.distributions.autoregressive_step import AffineStep, autoregressive_step
from vae_experiments.distributions.dtypes import at_least_float32
from vae_experiments.distributions.flow_scale import soft_clamp_log_scale


def standard_normal_log_prob(eps: Tensor) -> Tensor:
    """log N(eps; 0, I) summed over the last dimension."""
    return -0.5 * (eps.pow(2).sum(-1) + eps.shape[-1] * math.log(2 * math.pi))


def standardize(mu: Tensor, a: Tensor) -> Transform:
    """eps_i = (z_i - mu_i) / sigma_i with log sigma_i = 5 tanh(a_i / 5), in at least fp32 (out of autocast's bf16)."""
    return AffineStep(at_least_float32(mu), soft_clamp_log_scale(at_least_float32(a))).inv


def center(mu: Tensor) -> Transform:
    """eps_i = z_i - mu_i (``mean_only``), in at least fp32."""
    return AdditiveTransform(at_least_float32(mu)).inv


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
        self.steps = nn.ModuleList(
            autoregressive_step(
                latent_dim,
                center if mean_only else standardize,
                n_params=1 if mean_only else 2,
                order=forward_order if k % 2 == 0 else forward_order.flip(0),
                hidden_layers=hidden_layers,
                hidden_units=hidden_units,
            )
            for k in range(steps)
        )
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """f^{-1}(z) in one parallel pass per step, and log|det J_{f^{-1}}(z)| = -sum_i log sigma_i."""
        # the steps composed by hand: zuko's ComposedTransform asserts on its tuple of steps, a graph break
        log_det = z.new_zeros(z.shape[:-1])
        for step in self.steps:
            z, ladj = step().call_and_ladj(z)
            log_det = log_det + ladj
        return z, log_det

    def forward_flow(self, eps: Tensor) -> Tensor:
        """z = f(eps): per step d passes of z <- eps sigma(z) + mu(z); pass t fixes the t-th variable."""
        for step in reversed(self.steps):
            eps = step().inv(eps)
        return eps

    def log_prob(self, z: Tensor) -> Tensor:
        eps, log_det = self.inverse(z)
        return standard_normal_log_prob(eps) + log_det

    def sample(self, n: int) -> Tensor:
        return self.forward_flow(self._zero.new_empty(n, self.latent_dim).normal_())

    def distribution(self) -> Distribution | None:
        return None
