"""Output heads of a posterior: one joint linear map, or a separate hidden layer per output."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vae_experiments.nets.common import activation


class BranchedHeads(nn.Module):
    """``h (B, in_features) -> (B, sum(sizes))``: output i is ``Linear(hidden, sizes[i])(act(Linear(in, hidden)(h)))``,
    each branch with its own weights; the outputs are concatenated in order.

    The rho-VAE authors' CNN-VAE has such heads: mu, log sigma^2 (or rho and log s) each start with their own
    100352 -> 1024 ELU layer.
    """

    def __init__(self, in_features: int, sizes: Sequence[int], hidden: int, act: str = "elu") -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"posterior.head_hidden must be null or >= 1, got {hidden}")
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(in_features, hidden), activation(act), nn.Linear(hidden, size)) for size in sizes
        )

    def forward(self, h: Tensor) -> Tensor:
        return torch.cat([branch(h) for branch in self.branches], dim=-1)


def output_heads(in_features: int, sizes: Sequence[int], hidden: int | None = None, act: str = "elu") -> nn.Module:
    """``h -> (B, sum(sizes))``: one ``Linear`` when ``hidden`` is None, else ``BranchedHeads``."""
    if hidden is None:
        return nn.Linear(in_features, sum(sizes))
    return BranchedHeads(in_features, sizes, hidden, act)
