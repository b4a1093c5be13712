"""One masked autoregressive flow step: zuko's ``MaskedAutoregressiveTransform`` (a MADE, Germain et al. 2015, built
by zuko's ``MaskedMLP``; its sequential inverse) with an affine univariate map whose log-scale the caller bounds:

    y_i = exp(l_i) x_i + b_i,   (b_i, l_i) = g_i(x_{order < order(i)}, context),   log|dy_i/dx_i| = l_i.

zuko's own ``MonotonicAffineTransform`` bounds the log-scale with its rational clamp a / (1 + |a / log slope|); the
project's flow steps share the tanh bound of ``flow_scale``, so the univariate map is ``AffineStep``, which takes the
log-scale as given.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Transform, constraints
from zuko.flows import MaskedAutoregressiveTransform

from vae_experiments.errors import ConfigError


class AffineStep(Transform):
    """y = exp(log_scale) x + shift elementwise; log|dy/dx| = log_scale (no log of an exp). ``scale``: exp(log_scale)
    where the caller has computed it already."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = +1

    def __init__(self, shift: Tensor, log_scale: Tensor, scale: Tensor | None = None) -> None:
        super().__init__()
        self.shift, self.log_scale, self.scale = shift, log_scale, scale

    def _call(self, x: Tensor) -> Tensor:
        return x * (self.log_scale.exp() if self.scale is None else self.scale) + self.shift

    def _inverse(self, y: Tensor) -> Tensor:
        return (y - self.shift) * torch.exp(-self.log_scale)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.log_scale.expand(x.shape)


def autoregressive_step(
    features: int,
    univariate: Callable[..., Transform],
    n_params: int,
    order: Tensor,
    context: int = 0,
    hidden_layers: int = 2,
    hidden_units: int = 640,
    activation: type[nn.Module] = nn.ReLU,
) -> MaskedAutoregressiveTransform:
    """A lazy step ``step(context) -> Transform``: output i sees input j iff ``order[j] < order[i]`` (fully
    autoregressive, ``features`` passes to invert) and every context feature; ``univariate`` gets the MADE's
    ``n_params`` outputs per variable, each of shape (..., features)."""
    if features < 2 and context == 0:
        raise ConfigError("an autoregressive flow over 1 dimension has nothing to condition on; use latent_dim>=2")
    return MaskedAutoregressiveTransform(
        features,
        context,
        order=order,
        univariate=univariate,
        shapes=[()] * n_params,
        hidden_features=[hidden_units] * hidden_layers,
        activation=activation,
    )
