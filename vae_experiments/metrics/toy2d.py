"""The 2-D toy metrics of Soft-IntroVAE (docs/soft_intro_vae.md#2-d-toy-metrics): grid-normalised ELBO, and KL / JSD
between histograms.

Histograms: ``bins x bins`` cells on the square [-w, w]^2 (``w = half_width``), turned into probabilities over the
cells (points outside the square are dropped and the rest renormalised, as a ranged ``numpy.histogram2d`` with
``density=True`` does). With P the data's and Q the model's cell probabilities, both smoothed as
``(P + e) / (1 + n e)`` (n cells, e = 1e-10) so empty cells stay finite:

    KL  = KL(P || Q) = sum_i P_i log(P_i / Q_i)                         (nats)
    JSD = 1/2 KL(P || M) + 1/2 KL(Q || M),  M = (P + Q) / 2              (nats, in [0, log 2])

The authors' code divides KL by the number of histogram rows and uses densities (and its JSD has the KL arguments
swapped), so its numbers are on a different scale; these are the textbook quantities.

Grid-normalised ELBO: ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) is not a normalised density, so it is
normalised over the square: with g the centres of a ``grid_points x grid_points`` grid of cell area a,

    gnELBO = < ELBO(x) >_data - log( sum_g exp(ELBO(g)) a ),

the mean log-density of the data under the density proportional to exp(ELBO) on the square (higher is better;
one posterior sample per point, the KL in closed form where it exists).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vae_experiments.model import VAE

SMOOTHING = 1e-10


def histogram(points: Tensor, bins: int, half_width: float) -> Tensor:
    """Cell probabilities ``(bins, bins)`` of ``points (N, 2)`` on [-w, w]^2; points outside are dropped."""
    hist, _ = torch.histogramdd(points.detach().double().cpu(), bins=[bins, bins], range=[-half_width, half_width] * 2)
    total = hist.sum()
    if total == 0:
        raise ValueError(f"no point falls inside [-{half_width}, {half_width}]^2; raise eval.toy2d.half_width")
    return hist / total


def _smooth(p: Tensor) -> Tensor:
    return (p + SMOOTHING) / (1 + p.numel() * SMOOTHING)


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """KL(P || Q) in nats between two histograms of cell probabilities (smoothed, see the module docstring)."""
    p, q = _smooth(p), _smooth(q)
    return (p * (p.log() - q.log())).sum()


def jensen_shannon(p: Tensor, q: Tensor) -> Tensor:
    """JSD(P, Q) = 1/2 KL(P || M) + 1/2 KL(Q || M), M = (P + Q)/2; symmetric, 0 iff P = Q, at most log 2."""
    m = (p + q) / 2
    return 0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m)


@torch.no_grad()
def elbo(model: VAE, x: Tensor, batch_size: int = 65536) -> Tensor:
    """The ELBO of every row of ``x (N, 2)`` (one posterior sample each), in chunks of ``batch_size``."""
    return torch.cat([model.terms(chunk, 1).elbo for chunk in x.split(batch_size)])


def grid_axis(half_width: float, grid_points: int, device: torch.device | str = "cpu") -> Tensor:
    """The centres of ``grid_points`` equal cells on [-w, w]; the grid is their Cartesian square."""
    step = 2 * half_width / grid_points
    return torch.linspace(-half_width + step / 2, half_width - step / 2, grid_points, device=device)


@torch.no_grad()
def elbo_log_density(
    model: VAE, half_width: float, grid_points: int, batch_size: int = 65536, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """``(log_density, log_z)``: ELBO(g) - log Z at the ``grid_points``^2 grid centres g, as a matrix whose
    ``[i, j]`` is the point ``(axis[i], axis[j])`` (``grid_axis``), and log Z = log sum_g exp(ELBO(g)) a, which
    normalises exp(ELBO) into a density on the square."""
    axis = grid_axis(half_width, grid_points, device)
    values = elbo(model, torch.cartesian_prod(axis, axis), batch_size).double()
    log_z = values.logsumexp(0) + 2 * math.log(2 * half_width / grid_points)
    return (values - log_z).reshape(grid_points, grid_points), log_z


@torch.no_grad()
def grid_normalised_elbo(
    model: VAE, data: Tensor, half_width: float, grid_points: int = 1024, batch_size: int = 65536
) -> Tensor:
    """<ELBO(x)>_data - log sum_g exp(ELBO(g)) a over a ``grid_points``^2 grid on [-w, w]^2 (module docstring)."""
    _, log_z = elbo_log_density(model, half_width, grid_points, batch_size, data.device)
    return elbo(model, data, batch_size).double().mean() - log_z


@torch.no_grad()
def toy2d_metrics(
    model: VAE,
    data: Tensor,
    half_width: float,
    n_samples: int = 5000,
    bins: int = 100,
    grid_points: int = 1024,
) -> dict[str, float]:
    """``gnelbo``, ``kl`` = KL(data || model) and ``jsd`` between ``n_samples`` model samples (z ~ p(z), the
    decoder's mean) and the data points, on ``bins``^2 histograms over [-w, w]^2. The model is put in eval mode."""
    was_training = model.training
    model.eval()
    try:
        samples = model.sample(n_samples, mean=True)
        p = histogram(data, bins, half_width)
        q = histogram(samples, bins, half_width)
        gn = grid_normalised_elbo(model, data, half_width, grid_points)
    finally:
        model.train(was_training)
    return {"gnelbo": float(gn), "kl": float(kl_divergence(p, q)), "jsd": float(jensen_shannon(p, q))}
