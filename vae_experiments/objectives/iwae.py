"""The importance-weighted bound (Burda et al., 2016)."""

from __future__ import annotations

import math

from torch import Tensor

from vae_experiments.model import VAE
from vae_experiments.objectives.base import Objective


class IWAE(Objective):
    """Maximise L_k = E[log (1/k) sum_i p(x, z_i) / q(z_i|x)], z_i ~ q(z|x) (Burda et al., Eq. 8).

    L_1 is the ELBO and L_k is non-decreasing in k. Logs ``iwae`` (the bound trained) and ``elbo`` (the mean of the
    same k log-weights, the standard ELBO estimate) so runs stay comparable with other objectives.
    """

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"objective.k must be >= 1, got {k}")
        self.k = k

    def loss(self, model: VAE, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        t = model.terms(x, self.k)
        log_w = t.log_weights
        bound = log_w.logsumexp(0) - math.log(self.k)
        loss = -bound.mean()
        return loss, {
            "loss": loss.detach(),
            "iwae": bound.mean().detach(),
            "elbo": log_w.mean().detach(),
            "recon": -t.log_px_z.mean().detach(),
            "kl": t.kl.mean().detach(),
        }
