"""The diagonal-Gaussian posterior q(z|x) = N(mu(x), diag(sigma^2(x)))."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vae_experiments.distributions.dtypes import at_least_float32
from vae_experiments.nets.heads import output_heads


class DiagonalGaussianPosterior(nn.Module):
    """A linear head ``h -> (mu, sigma)``; ``q = Independent(Normal(mu, sigma), 1)``.

    ``scale``: how the second head becomes sigma: ``exp`` reads it as log sigma^2 (Kingma & Welling), ``softplus``
    as softplus(.) + ``min_var`` for the variance (SOS-VAE's parametrisation). ``head_hidden``: null for one linear
    head, or the width of a separate hidden layer (activation ``head_act``) in front of each of mu and sigma (see
    ``BranchedHeads``; the rho-VAE authors' CNN-VAE).
    """

    def __init__(
        self,
        in_features: int,
        latent_dim: int,
        scale: Literal["exp", "softplus"] = "exp",
        min_var: float = 0.0,
        head_hidden: int | None = None,
        head_act: str = "elu",
    ) -> None:
        super().__init__()
        if scale not in ("exp", "softplus"):
            raise ValueError(f"posterior.scale must be 'exp' or 'softplus', got {scale!r}")
        self.latent_dim = latent_dim
        self.scale = scale
        self.min_var = min_var
        self.head = output_heads(in_features, [latent_dim, latent_dim], head_hidden, head_act)

    def forward(self, h: Tensor) -> Distribution:
        mu, a = at_least_float32(self.head(h)).chunk(2, dim=-1)
        if self.scale == "exp" and not self.min_var:
            std = torch.exp(0.5 * a)
        else:
            var = a.exp() if self.scale == "exp" else F.softplus(a)
            std = (var + self.min_var).sqrt()
        # no validation: any real mu and positive std is valid, and the check is a host read (a GPU wait) each step
        return Independent(Normal(mu, std, validate_args=False), 1)
