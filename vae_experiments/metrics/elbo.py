"""The test-time ELBO, averaged over many posterior draws so that its Monte-Carlo error is negligible."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from vae_experiments.model import VAE


@torch.inference_mode()
def mean_elbo(
    model: VAE, x: Tensor, k: int, max_rows: int = 4096, q: Distribution | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) per example, each expectation the mean over ``k`` draws of
    z ~ q(z|x); the KL in closed form where the posterior/prior pair has one (then only the reconstruction term is
    sampled), else its Monte-Carlo estimate over the same draws. Returns (elbo, E_q[log p(x|z)], KL), each (B,).

    One draw gives an unbiased but noisy estimate; ``k`` draws divide its variance by ``k``. Draws are taken in
    chunks of at most ``max_rows`` decoder rows (chunk * B), as in the importance-sampled NLL.
    """
    if k < 1:
        raise ValueError(f"eval.elbo_samples must be >= 1, got {k}")
    q = model.encode(x) if q is None else q
    chunk = max(1, min(k, max_rows // max(1, x.shape[0])))
    recon_sum = kl_sum = torch.zeros(x.shape[0], device=x.device)
    analytic_kl = None
    done = 0
    while done < k:
        n = min(chunk, k - done)
        latent = model.latent(x, n, q=q)
        recon_sum = recon_sum + model.log_likelihood(latent.z, x).sum(0)
        if latent.analytic_kl:
            analytic_kl = latent.kl
        else:
            kl_sum = kl_sum + latent.kl * n
        done += n
    recon = recon_sum / k
    kl = analytic_kl if analytic_kl is not None else kl_sum / k
    return recon - kl, recon, kl
