"""Posterior-collapse diagnostics: active units (Burda et al., 2016) and KL per latent dimension."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class PosteriorDiagnostics(Metric):
    """Accumulates, over a data set and across DDP ranks, what the collapse diagnostics need.

    Active units: A_u = Cov_x(E_{q(z|x)}[z_u]), a unit is active when A_u > ``threshold`` (0.01).
    KL per dimension: E_x[KL(q(z_u|x) || p(z_u))], when the posterior and prior factorise.
    """

    full_state_update = False

    def __init__(self, latent_dim: int, threshold: float = 0.01) -> None:
        super().__init__()
        self.threshold = threshold
        zeros = torch.zeros(latent_dim, dtype=torch.float64)
        self.add_state("mean_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("mean_sq_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("kl_sum", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("kl_count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, posterior_means: Tensor, kl_per_dim: Tensor | None = None) -> None:
        m = posterior_means.detach().double()
        self.mean_sum += m.sum(0)
        self.mean_sq_sum += m.pow(2).sum(0)
        self.count += m.shape[0]
        if kl_per_dim is not None:
            self.kl_sum += kl_per_dim.detach().double().sum(0)
            self.kl_count += kl_per_dim.shape[0]

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=2)
        mean = self.mean_sum / n
        activity = (self.mean_sq_sum - n * mean.pow(2)) / (n - 1)  # unbiased Cov_x of the posterior means
        out = {"activity": activity, "active_units": (activity > self.threshold).sum()}
        if self.kl_count > 0:
            out["kl_per_dim"] = self.kl_sum / self.kl_count
        return out
