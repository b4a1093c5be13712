"""Fully connected encoder and decoder for any data shape (images are flattened)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from vae_experiments.nets.common import activation


def _mlp(sizes: Sequence[int], act: str, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """``x (B, *in_shape) -> h (B, hidden[-1])``: flatten, then Linear + activation per hidden layer."""

    def __init__(self, in_shape: Sequence[int], hidden: Sequence[int] = (512, 256), act: str = "relu") -> None:
        super().__init__()
        if not hidden:
            raise ValueError("encoder.hidden needs at least one layer")
        self.net = _mlp([math.prod(in_shape), *hidden], act, last_activation=True)
        self.out_features = hidden[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    """``z (B, d) -> params (B, *out_shape)``: hidden layers, then a linear map to every output value."""

    autoregressive = False

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        data_shape: Sequence[int] | None = None,
        hidden: Sequence[int] = (256, 512),
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.net = _mlp([latent_dim, *hidden, math.prod(out_shape)], act, last_activation=False)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.out_shape)
