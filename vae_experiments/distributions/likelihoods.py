"""Factorised likelihoods p(x|z): Bernoulli and Gaussian, each summed over all values of an example."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from vae_experiments.distributions.dtypes import at_least_float32

LOG_2PI = math.log(2 * math.pi)


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logit_i)).

    On binarised data (``levels == 2``) this is a probability mass; on grey levels in [0, 1], as the rho-VAE paper
    uses it, ``log_prob`` is the negative binary cross-entropy, not a normalised likelihood, and bits/dim is not
    reported (the data's levels differ from the likelihood's).
    """

    levels = 2

    def num_params(self, channels: int) -> int:
        return channels

    def forward(self, params: Tensor) -> Distribution:
        # validate_args=False: grey-level targets in (0, 1) are allowed (BCE on intensities).
        return Independent(Bernoulli(logits=at_least_float32(params), validate_args=False), params.dim() - 1)

    def log_likelihood(self, params: Tensor, x: Tensor) -> Tensor:
        """``forward(params).log_prob(x)`` without Distribution objects, for ``params`` of shape (k, B, *data) and
        ``x`` of shape (B, *data) broadcast over the k samples: sum(x * l) - sum(softplus(l)). Shape (k, B).

        Faster than the Distribution path (BENCHMARKS.md, Digits) and no k-fold copy of ``x``.
        """
        logits = at_least_float32(params).flatten(2)
        # autocast off: einsum runs as a bmm, which bf16 autocast would round (~0.1-1 nat per image at 784 values)
        with torch.autocast(logits.device.type, enabled=False):
            x_dot_l = torch.einsum("kbd,bd->kb", logits, x.flatten(1).to(logits.dtype))
        return x_dot_l - F.softplus(logits).sum(-1)


class GaussianLikelihood(nn.Module):
    """p(x|z) = prod_i N(x_i; mu_i, sigma_i^2), a density (nats, not a mass over 8-bit levels).

    ``sigma``: ``fixed`` (the constant ``sigma_init``), ``learned`` (one scalar, log-parametrised) or
    ``per_pixel`` (the decoder outputs a second map, softplus + ``min_sigma``).
    """

    levels = None

    def __init__(
        self,
        sigma: Literal["fixed", "learned", "per_pixel"] = "learned",
        sigma_init: float = 1.0,
        min_sigma: float = 1e-3,
    ) -> None:
        super().__init__()
        if sigma not in ("fixed", "learned", "per_pixel"):
            raise ValueError(f"likelihood.sigma must be fixed, learned or per_pixel, got {sigma!r}")
        self.sigma = sigma
        self.min_sigma = min_sigma
        log_sigma = torch.tensor(math.log(sigma_init))
        if sigma == "learned":
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def num_params(self, channels: int) -> int:
        return 2 * channels if self.sigma == "per_pixel" else channels

    def forward(self, params: Tensor) -> Distribution:
        params = at_least_float32(params)
        if self.sigma == "per_pixel":
            mu, s = params.chunk(2, dim=1)
            scale = F.softplus(s) + self.min_sigma
        else:
            mu = params
            scale = self.log_sigma.exp().expand_as(mu)
        return Independent(Normal(mu, scale, validate_args=False), mu.dim() - 1)  # no per-step host read

    def log_likelihood(self, params: Tensor, x: Tensor) -> Tensor:
        """``forward(params).log_prob(x)`` without Distribution objects: ``params`` (k, B, *data params), ``x``
        (B, *data) broadcast over the k samples. Shape (k, B)."""
        params = at_least_float32(params)
        x = x.to(params.dtype)
        if self.sigma == "per_pixel":
            mu, s = params.chunk(2, dim=2)
            scale = F.softplus(s) + self.min_sigma
            z = ((x - mu) / scale).flatten(2)
            return -0.5 * z.pow(2).sum(-1) - scale.log().flatten(2).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI
        log_sigma = at_least_float32(self.log_sigma)
        sq = (x - params).flatten(2).pow(2).sum(-1)
        d = x[0].numel()
        return -0.5 * sq * torch.exp(-2 * log_sigma) - d * (log_sigma + 0.5 * LOG_2PI)
