"""Inverse-autoregressive-flow posterior q(z|x) (Kingma et al. 2016, Eqs. 9-14).

    z_0 = mu_0 + sigma_0 * eps,  eps ~ N(0, I);   (mu_0, sigma_0, c) = head(h)
    z_t = sigma_t z_{t-1} + (1 - sigma_t) m_t,  (m_t, s_t) = MADE_t(z_{t-1}, c),  sigma_t = sigmoid(s_t + b)
    log q(z_T|x) = -sum_i [ log sigma_0,i + eps_i^2 / 2 + log(2 pi) / 2 + sum_t log sigma_t,i ]

The gate bounds sigma_t above by 1; below, log sigma_t is soft-clamped at -5 (5 tanh(log sigma_t / 5), the rule the
autoregressive-flow prior's steps share, ``flow_scale``), so a closed gate cannot make log q infinite.

Sampling and log q of the sample are one parallel pass per step; log q of an arbitrary z inverts each step,
which takes d sequential passes of its MADE (exact after d passes, one more variable fixed per pass).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Size, Tensor, nn
from torch.distributions import Distribution, constraints

from vae_experiments.distributions.dtypes import at_least_float32
from vae_experiments.distributions.flow_scale import soft_clamp_log_scale
from vae_experiments.nets.made import MADE

_EMPTY = Size()


class IAFDistribution(Distribution):
    """q(z|x) with batch (B,) and event (d,); ``rsample_and_log_prob`` gives z and log q(z|x) in one pass.

    ``log_prob`` of the tensor most recently returned by ``rsample`` uses the cached value; any other z
    takes the sequential inverse."""

    arg_constraints: dict = {}  # noqa: RUF012 (torch's class-level contract)
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor, context: Tensor, mades: nn.ModuleList, gate_bias: float):
        self.loc, self.scale, self.context, self.mades, self.gate_bias = loc, scale, context, mades, gate_bias
        self._cache: tuple[Tensor, Tensor] | None = None
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    def _step(self, t: int, z: Tensor) -> tuple[Tensor, Tensor]:
        """(m_t, log sigma_t) at z_{t-1} = z."""
        out = self.mades[t](z, self.context)
        out = at_least_float32(out)  # out of autocast's bf16: the log-det sums in fp32
        return out[..., 0], soft_clamp_log_scale(F.logsigmoid(out[..., 1] + self.gate_bias))

    def transform(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(z_T, log q(z_T|x)) for base noise ``eps`` of shape (*sample_shape, B, d), one pass per step."""
        z = self.loc + self.scale * eps
        log_q = -(self.scale.log() + 0.5 * eps.pow(2) + 0.5 * math.log(2 * math.pi)).sum(-1)
        for t in range(len(self.mades)):
            m, log_sigma = self._step(t, z)
            sigma = log_sigma.exp()
            z = sigma * z + (1 - sigma) * m
            log_q = log_q - log_sigma.sum(-1)
        return z, log_q

    def rsample_and_log_prob(self, sample_shape: Size = _EMPTY) -> tuple[Tensor, Tensor]:
        eps = torch.randn(Size(sample_shape) + self.loc.shape, dtype=self.loc.dtype, device=self.loc.device)
        self._cache = self.transform(eps)
        return self._cache

    def rsample(self, sample_shape: Size = _EMPTY) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def log_prob(self, value: Tensor) -> Tensor:
        if self._cache is not None and value is self._cache[0]:
            return self._cache[1]
        z, log_det = value, value.new_zeros(value.shape[:-1])
        for t in reversed(range(len(self.mades))):
            prev = torch.zeros_like(z)
            for _ in range(z.shape[-1]):  # z_{t-1} = (z_t - (1 - sigma) m) / sigma, one more variable per pass
                m, log_sigma = self._step(t, prev)
                prev = (z - (1 - log_sigma.exp()) * m) * torch.exp(-log_sigma)
            log_det = log_det - log_sigma.sum(-1)
            z = prev
        eps = (z - self.loc) / self.scale
        log_q0 = -(self.scale.log() + 0.5 * eps.pow(2) + 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_q0 + log_det


class IAFPosterior(nn.Module):
    """``posterior=iaf``: a linear head h -> (mu_0, log sigma_0^2, context), then ``steps`` IAF steps, each a
    MADE (``hidden_layers`` x ``hidden_units``, ELU) over z with the ``context_features``-dim context; the
    variable order is reversed between steps. ``gate_bias`` b starts sigma_t near 1 (sigmoid(1) = 0.73), so
    the flow starts close to the identity, as Kingma et al. recommend."""

    def __init__(
        self,
        in_features: int,
        latent_dim: int,
        steps: int = 2,
        context_features: int = 64,
        hidden_layers: int = 2,
        hidden_units: int = 320,
        gate_bias: float = 1.0,
    ) -> None:
        super().__init__()
        self.latent_dim, self.context_features, self.gate_bias = latent_dim, context_features, gate_bias
        self.head = nn.Linear(in_features, 2 * latent_dim + context_features)
        order = torch.arange(latent_dim)
        self.mades = nn.ModuleList(
            MADE(
                latent_dim,
                n_params=2,
                context=context_features,
                hidden_layers=hidden_layers,
                hidden_units=hidden_units,
                order=order if t % 2 == 0 else order.flip(0),
                activation=nn.ELU,
            )
            for t in range(steps)
        )

    def forward(self, h: Tensor) -> IAFDistribution:
        d = self.latent_dim
        out = self.head(h)
        out = at_least_float32(out)  # the density in at least fp32 under autocast
        mu, a, context = out[..., :d], out[..., d : 2 * d], out[..., 2 * d :]
        return IAFDistribution(mu, torch.exp(0.5 * a), context, self.mades, self.gate_bias)
