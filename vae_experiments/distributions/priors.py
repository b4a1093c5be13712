"""The standard-normal prior p(z) = N(0, I)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I_d); exposes ``distribution()`` so closed-form KLs apply."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        # A buffer, so the distribution follows the module's device and dtype.
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    def distribution(self) -> Distribution:
        loc = self._zero.expand(self.latent_dim)
        return Independent(Normal(loc, torch.ones_like(loc)), 1)

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (z.pow(2).sum(-1) + self.latent_dim * math.log(2 * math.pi))

    def sample(self, n: int) -> Tensor:
        return torch.randn(n, self.latent_dim, device=self._zero.device)
