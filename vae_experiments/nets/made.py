"""MADE (Germain et al. 2015): an MLP whose masks make output i depend only on inputs earlier in an order.

    params_i = g_i(x_{order < order(i)}, context)

A thin wrapper of zuko's ``MaskedMLP``, which builds the masks from an adjacency matrix; this module only
states the autoregressive adjacency, appends the (unmasked) context and reshapes the output to
(..., features, n_params).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from zuko.nn import MaskedMLP

from vae_experiments.errors import ConfigError


class MADE(nn.Module):
    """``forward(x (..., features), context (..., context)) -> (..., features, n_params)``.

    ``order``: a permutation; output i sees input j iff ``order[j] < order[i]`` (default: 0, 1, ...).
    ``hidden_layers`` x ``hidden_units`` units with ``activation`` (ReLU); the context feeds every unit.
    """

    def __init__(
        self,
        features: int,
        n_params: int = 2,
        context: int = 0,
        hidden_layers: int = 2,
        hidden_units: int = 640,
        order: Tensor | None = None,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if features < 2 and context == 0:
            raise ConfigError("an autoregressive flow over 1 dimension has nothing to condition on; use latent_dim>=2")
        self.order = torch.arange(features) if order is None else torch.as_tensor(order)
        self.features, self.n_params, self.context = features, n_params, context
        adjacency = self.order[None, :] < self.order[:, None]
        adjacency = torch.cat([adjacency, torch.ones(features, context, dtype=torch.bool)], dim=1)
        adjacency = adjacency.repeat_interleave(n_params, dim=0)
        self.net = MaskedMLP(adjacency, [hidden_units] * hidden_layers, activation=activation)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context:
            x = torch.cat([x, context.expand(*x.shape[:-1], self.context)], dim=-1)
        return self.net(x).unflatten(-1, (self.features, self.n_params))
