"""Importance-sampled marginal log-likelihood (Burda et al., 2016), vectorised over samples and examples."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from vae_experiments.model import VAE


@torch.inference_mode()
def importance_sampled_log_likelihood(
    model: VAE, x: Tensor, k: int, max_rows: int = 4096, q: Distribution | None = None
) -> Tensor:
    """log p(x) ~= logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k, z_i ~ q(z|x); shape (B,).

    The k samples are drawn in chunks so that one decoder pass sees at most ``max_rows`` rows (chunk * B), and the
    chunks are combined with a running logsumexp: memory is bounded, the estimate is the same as in one pass.
    The encoder runs once per example; each chunk is one decoder pass and the likelihood's Distribution-free
    ``log_likelihood`` where it has one. ``max_rows`` is the memory budget: the decoder's output and its log-density
    terms take ~3 x 4 bytes x ``max_rows`` x (values per example); 2,000-4,000 rows of 784 values (~10-40 MB) were
    the fastest on an idle 2-core machine, and 16,384 rows slower: larger chunks fall out of cache (BENCHMARKS.md,
    Importance-sampled NLL). A convolutional decoder's rows carry whole feature maps: for VLAE's PixelCNN ~200 rows.
    ``q``: q(z|x) when the caller has it already. The estimator is a stochastic lower bound on log p(x) whose gap
    shrinks as k grows (it is the IWAE bound L_k).
    """
    if k < 1:
        raise ValueError(f"eval.nll_samples must be >= 1, got {k}")
    q = model.encode(x) if q is None else q
    chunk = max(1, min(k, max_rows // max(1, x.shape[0])))
    total = torch.full((x.shape[0],), -math.inf, device=x.device)
    done = 0
    while done < k:
        n = min(chunk, k - done)
        latent = model.latent(x, n, q=q)
        log_w = model.log_likelihood(latent.z, x) + latent.log_pz - latent.log_qz
        total = torch.logaddexp(total, log_w.logsumexp(0))
        done += n
    return total - math.log(k)


def bits_per_dim(nll_nats: Tensor, dims: int) -> Tensor:
    """bits/dim = NLL / (D ln 2), NLL in nats per example over D discrete values."""
    return nll_nats / (dims * math.log(2))
