"""The rho-VAE authors' MLP training step, re-created from their ``models.py`` / ``main.py``.

See docs/rho_vae.md#where-the-authors-code-differs and docs/rho_vae.md#architecture.

A yardstick for ``scripts/bench_rho.py``, not part of the project: it times the authors' way of computing a step
(three separate linear heads, sigmoid + summed BCE, a Python loop over the latent dimensions with ``torch.cat`` in
the rho sampler, the batch-weighted KL, Xavier-uniform init, for-loop Adam at lr 1e-3) on this machine in the same
minutes as ours. The rho step reproduces their random-walk sampler and KL weighting, which are not a valid bound:
only its cost is of interest here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AuthorsMLPVAE(nn.Module):
    """VanillaVAE (``rho=False``) or rho-VanillaVAE: 784-400 (ReLU) -> heads; decoder d-400 (ReLU)-784 (sigmoid)."""

    def __init__(self, rho: bool, latent: int = 10, hidden: int = 400, pixels: int = 784) -> None:
        super().__init__()
        self.rho, self.latent = rho, latent
        self.fc1 = nn.Linear(pixels, hidden)
        self.fc_mu = nn.Linear(hidden, latent)
        if rho:
            self.fc_rho = nn.Linear(hidden, 1)
            self.fc_log_s = nn.Linear(hidden, 1)
        else:
            self.fc_log_var = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, pixels)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def loss(self, x: Tensor) -> Tensor:
        x = x.view(x.shape[0], -1)
        h = F.relu(self.fc1(x))
        mu = self.fc_mu(h)
        if self.rho:
            rho, log_s = torch.tanh(self.fc_rho(h)), self.fc_log_s(h)
            std = torch.exp(0.5 * log_s)
            # their sampler: z_1 = sqrt(s) eps_1, z_j = z_{j-1} + sqrt(s) eps_j (rho unused), one dimension at a time
            z = std * torch.randn_like(std)
            for _ in range(1, self.latent):
                z = torch.cat([z, z[:, -1:] + std * torch.randn_like(std)], dim=1)
            z = z + mu
            d = self.latent
            # their KL: the ||mu||^2 part summed over the batch, the s and rho parts averaged over it
            kl = 0.5 * (
                mu.pow(2).sum() + (-d * log_s - (d - 1) * torch.log(1 - rho.pow(2)) + d * (log_s.exp() - 1)).mean()
            )
        else:
            log_var = self.fc_log_var(h)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
            kl = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())
        recon = torch.sigmoid(self.fc4(F.relu(self.fc3(z))))
        return F.binary_cross_entropy(recon, x, reduction="sum") + kl


def authors_step(posterior: str, x: Tensor) -> Callable[[int], None]:
    """One training step of the authors' ``main.py``: zero_grad, loss, backward, Adam (lr 1e-3, PyTorch defaults)."""
    model = AuthorsMLPVAE(rho=posterior == "rho")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(i: int) -> None:
        optimizer.zero_grad()
        model.loss(x).backward()
        optimizer.step()

    return step
