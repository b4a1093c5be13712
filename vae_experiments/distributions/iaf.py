"""Inverse-autoregressive-flow posterior q(z|x) (Kingma et al. 2016, Eqs. 9-14).

    z_0 = mu_0 + sigma_0 * eps,  eps ~ N(0, I);   (mu_0, sigma_0, c) = head(h)
    z_t = sigma_t z_{t-1} + (1 - sigma_t) m_t,  (m_t, s_t) = MADE_t(z_{t-1}, c),  sigma_t = sigmoid(s_t + b)
    log q(z_T|x) = -sum_i [ log sigma_0,i + eps_i^2 / 2 + log(2 pi) / 2 + sum_t log sigma_t,i ]

The gate bounds sigma_t above by 1; below, log sigma_t is soft-clamped at -5 (5 tanh(log sigma_t / 5), the rule the
autoregressive-flow prior's steps share, ``flow_scale``), so a closed gate cannot make log q infinite.

Sampling and log q of the sample are one parallel pass per step; log q of an arbitrary z inverts each step,
which takes d sequential passes of its MADE (exact after d passes, one more variable fixed per pass) and one more
for the step's log-det.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Size, Tensor, nn
from torch.distributions import Distribution, Transform, constraints

from vae_experiments.distributions.autoregressive_step import AffineStep, autoregressive_step
from vae_experiments.distributions.dtypes import at_least_float32
from vae_experiments.distributions.flow_scale import soft_clamp_log_scale

_EMPTY = Size()


def gated_step(m: Tensor, s: Tensor, gate_bias: float) -> AffineStep:
    """z_t = sigma_t z_{t-1} + (1 - sigma_t) m_t with log sigma_t = 5 tanh(logsigmoid(s_t + b) / 5), in at least
    fp32 (out of autocast's bf16: the log-det sums in fp32)."""
    m, s = at_least_float32(m), at_least_float32(s)
    log_sigma = soft_clamp_log_scale(F.logsigmoid(s + gate_bias))
    sigma = log_sigma.exp()
    return AffineStep((1 - sigma) * m, log_sigma, sigma)


class IAFDistribution(Distribution):
    """q(z|x) with batch (B,) and event (d,); ``rsample_and_log_prob`` gives z and log q(z|x) in one pass.

    ``steps`` are the IAF steps at this context (z_{t-1} -> z_t). ``log_prob`` of the tensor most recently returned by
    ``rsample`` uses the cached value; any other z takes the sequential inverse."""

    arg_constraints: dict = {}  # noqa: RUF012 (torch's class-level contract)
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor, steps: list[Transform]):
        self.loc, self.scale, self.steps = loc, scale, steps
        self._cache: tuple[Tensor, Tensor] | None = None
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    def _log_q0(self, eps: Tensor) -> Tensor:
        """log q(z_0|x) = -sum_i [log sigma_0,i + eps_i^2 / 2 + log(2 pi) / 2] at z_0 = mu_0 + sigma_0 eps."""
        return -(self.scale.log() + 0.5 * eps.pow(2) + 0.5 * math.log(2 * math.pi)).sum(-1)

    def transform(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(z_T, log q(z_T|x)) for base noise ``eps`` of shape (*sample_shape, B, d), one pass per step."""
        z, log_q = self.loc + self.scale * eps, self._log_q0(eps)
        for step in self.steps:  # composed by hand: zuko's ComposedTransform asserts on its steps, a graph break
            z, log_det = step.call_and_ladj(z)
            log_q = log_q - log_det
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
        for step in reversed(self.steps):
            z, log_det_inverse = step.inv.call_and_ladj(z)  # d sequential MADE passes
            log_det = log_det + log_det_inverse
        return self._log_q0((z - self.loc) / self.scale) + log_det


class IAFPosterior(nn.Module):
    """``posterior=iaf``: a linear head h -> (mu_0, log sigma_0^2, context), then ``steps`` IAF steps, each a
    MADE (``hidden_layers`` x ``hidden_units``, ELU) over z with the ``context_features``-dim context; the
    variable order is reversed between steps. ``gate_bias`` b starts sigma_t near 1 (sigmoid(1) = 0.73), so
    the flow starts close to the identity, as Kingma et al. recommend. The steps are zuko masked autoregressive
    transforms conditioned on the context (``steps[t](context)`` is z_t -> z_{t+1})."""

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
        self.steps = nn.ModuleList(
            autoregressive_step(
                latent_dim,
                partial(gated_step, gate_bias=gate_bias),
                n_params=2,
                order=order if t % 2 == 0 else order.flip(0),
                context=context_features,
                hidden_layers=hidden_layers,
                hidden_units=hidden_units,
                activation=nn.ELU,
            )
            for t in range(steps)
        )

    def forward(self, h: Tensor) -> IAFDistribution:
        d = self.latent_dim
        out = self.head(h)
        out = at_least_float32(out)  # the density in at least fp32 under autocast
        mu, a, context = out[..., :d], out[..., d : 2 * d], out[..., 2 * d :]
        return IAFDistribution(mu, torch.exp(0.5 * a), [step(context) for step in self.steps])
