"""Discretised logistic mixture: normalisation, hand values from the logistic CDF, sampling, RGB coupling."""

from __future__ import annotations

import math
from pathlib import Path

import mpmath
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vae_experiments.contracts import require_event_shape
from vae_experiments.distributions.discretized_logistic import (
    DiscretizedLogisticMixtureLikelihood,
    logistic_bin_log_prob,
)
from vae_experiments.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
D = torch.float64


def grey_params(logits: list[float], means: list[float], log_scales: list[float]) -> torch.Tensor:
    """One 1x1 grey pixel: (1, 3K, 1, 1)."""
    return torch.tensor([*logits, *means, *log_scales], dtype=D).reshape(1, -1, 1, 1)


def rgb_params(logits, means, log_scales, coeffs) -> torch.Tensor:
    """One 1x1 RGB pixel; means/log_scales/coeffs given as [channel][component]: (1, 10K, 1, 1)."""
    flat = [*logits]
    for block in (means, log_scales, coeffs):
        for row in block:
            flat.extend(row)
    return torch.tensor(flat, dtype=D).reshape(1, -1, 1, 1)


def bin_prob(value: int, loc: float, scale: float, levels: int = 256) -> float:
    """P(level value) straight from the logistic CDF, in [-1, 1] units, with 200 digits (no cancellation)."""
    with mpmath.workdps(200):
        y, h = 2 * mpmath.mpf(value) / (levels - 1) - 1, mpmath.mpf(1) / (levels - 1)

        def cdf(t: mpmath.mpf) -> mpmath.mpf:
            return 1 / (1 + mpmath.exp(-(t - loc) / scale))

        upper = 1 if value == levels - 1 else cdf(y + h)
        lower = 0 if value == 0 else cdf(y - h)
        return float(mpmath.log(upper - lower))


def all_levels(levels: int = 256) -> torch.Tensor:
    return torch.arange(levels, dtype=D) / (levels - 1)


def test_grey_bins_sum_to_one_per_pixel() -> None:
    """Each pixel's 256 probabilities sum to 1, for scales from the clamp (-7) to wide and means off-range."""
    lik = DiscretizedLogisticMixtureLikelihood(num_mixtures=3)
    logits = torch.tensor([[0.3, -1.0, 2.0], [5.0, 0.0, -5.0], [0.0, 0.0, 0.0], [-2.0, 1.0, 0.5]])
    means = torch.tensor([[-1.5, 0.0, 0.9], [1.2, -0.3, 0.0], [-0.99, 0.5, 3.0], [0.0, 0.01, -0.02]])
    log_scales = torch.tensor([[-9.0, -3.0, 0.0], [2.0, -7.0, -5.0], [-4.0, -1.0, 1.0], [-7.0, -7.0, -6.0]])
    params = torch.cat([logits, means, log_scales], 1).to(D).reshape(4, 9, 1, 1)
    p = lik(params)
    require_event_shape(p, 4, (1, 1, 1))
    lp = p.log_prob(all_levels().reshape(256, 1, 1, 1, 1))  # (256, B): every level for every pixel
    assert lp.shape == (256, 4)
    torch.testing.assert_close(lp.logsumexp(0), torch.zeros(4, dtype=D), atol=1e-12, rtol=0)


RGB_PARAMS = (
    [0.4, -0.2],
    [[0.1, -0.6], [0.3, 0.0], [-0.2, 0.8]],
    [[-2.0, -3.5], [-1.5, -7.0], [-3.0, -2.5]],
    [[0.5, -1.0], [2.0, 0.3], [-0.7, 1.5]],
)


@pytest.mark.parametrize("red", [0, 77, 128, 255])
def test_rgb_green_blue_sum_to_one_given_red(red: int) -> None:
    """sum over all 256^2 (g, b) of p(r, g, b) = sum_k pi_k P(r | k): G and B normalise for every r."""
    p = DiscretizedLogisticMixtureLikelihood(num_mixtures=2)(rgb_params(*RGB_PARAMS))
    levels = all_levels()
    gb = torch.cartesian_prod(levels, levels)
    x = torch.cat([torch.full((gb.shape[0], 1), red / 255, dtype=D), gb], -1).reshape(-1, 1, 3, 1, 1)
    weights = torch.softmax(torch.tensor(RGB_PARAMS[0], dtype=D), 0)
    marginal = sum(
        w * math.exp(bin_prob(red, m, math.exp(s)))
        for w, m, s in zip(weights.tolist(), RGB_PARAMS[1][0], RGB_PARAMS[2][0], strict=True)
    )
    torch.testing.assert_close(p.log_prob(x).exp().sum(), torch.tensor(marginal, dtype=D), rtol=1e-10, atol=0)


def test_rgb_joint_sums_to_one_on_a_coarse_grid() -> None:
    """The full joint over all 16^3 values of 16-level data (256^3 cells take minutes on this CPU)."""
    p = DiscretizedLogisticMixtureLikelihood(num_mixtures=2, levels=16)(rgb_params(*RGB_PARAMS))
    grid = torch.cartesian_prod(*[all_levels(16)] * 3).reshape(-1, 1, 3, 1, 1)
    torch.testing.assert_close(p.log_prob(grid).exp().sum(), torch.ones((), dtype=D), rtol=0, atol=1e-12)


def test_rgb_single_component_factorises_into_grey_conditionals() -> None:
    """K = 1: p(r, g, b) = P(r; mu_R) P(g; mu_G + c0 y_r) P(b; mu_B + c1 y_r + c2 y_g), grey conditionals."""
    lik = DiscretizedLogisticMixtureLikelihood(num_mixtures=1)
    means, log_scales, raw = [0.2, -0.4, 0.6], [-2.5, -3.0, -1.5], [0.8, -0.5, 1.2]
    p = lik(rgb_params([0.0], [[m] for m in means], [[s] for s in log_scales], [[c] for c in raw]))
    c0, c1, c2 = (math.tanh(c) for c in raw)
    x = torch.tensor([[40, 170, 255], [0, 128, 3], [255, 255, 0]], dtype=D) / 255
    expected = []
    for r, g, b in x * 255:
        yr, yg = 2 * r.item() / 255 - 1, 2 * g.item() / 255 - 1
        scales = [math.exp(s) for s in log_scales]
        expected.append(
            bin_prob(int(r), means[0], scales[0])
            + bin_prob(int(g), means[1] + c0 * yr, scales[1])
            + bin_prob(int(b), means[2] + c1 * yr + c2 * yg, scales[2])
        )
    lp = p.log_prob(x.reshape(3, 1, 3, 1, 1))[:, 0]
    torch.testing.assert_close(lp, torch.tensor(expected, dtype=D), rtol=1e-10, atol=1e-10)


def test_grey_log_prob_by_hand_from_the_logistic_cdf() -> None:
    """A 1x3 grey image (levels 0, 100, 255: both edges and a middle bin), K = 2, against scipy."""
    logits, means, log_scales = [0.7, -0.4], [-0.3, 0.5], [-2.0, -1.0]
    lik = DiscretizedLogisticMixtureLikelihood(num_mixtures=2)
    params = grey_params(logits, means, log_scales).reshape(1, 6, 1, 1).expand(1, 6, 1, 3)
    x = torch.tensor([0, 100, 255], dtype=D).reshape(1, 1, 1, 3) / 255
    weights = torch.softmax(torch.tensor(logits, dtype=D), 0).tolist()
    expected = sum(
        math.log(
            sum(w * math.exp(bin_prob(v, m, math.exp(s))) for w, m, s in zip(weights, means, log_scales, strict=True))
        )
        for v in (0, 100, 255)
    )
    torch.testing.assert_close(lik(params).log_prob(x), torch.tensor([expected], dtype=D), rtol=1e-12, atol=0)


def test_float32_is_exact_far_in_the_tails() -> None:
    """Where PixelCNN++ falls back to the mid-point rule (mass ~ e^-230), float32 matches 200-digit values."""
    loc, log_scale = -1.0, -5.0
    for value in (60, 200, 254, 255):
        y32 = torch.tensor(2 * value / 255 - 1, dtype=torch.float32)
        got = logistic_bin_log_prob(y32, torch.tensor(loc), torch.tensor(log_scale), 256).item()
        assert got == pytest.approx(bin_prob(value, loc, math.exp(log_scale)), rel=1e-6)


def test_finite_log_prob_and_gradients_at_extreme_parameters() -> None:
    lik = DiscretizedLogisticMixtureLikelihood(num_mixtures=2)
    params = torch.tensor([[30.0, -30.0, -50.0, 50.0, -20.0, 8.0]]).reshape(1, 6, 1, 1)
    params = params.expand(1, 6, 2, 2).clone().requires_grad_()
    x = torch.tensor([0.0, 1.0, 0.5, 3 / 255]).reshape(1, 1, 2, 2)
    lp = lik(params).log_prob(x)
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert params.grad is not None and torch.isfinite(params.grad).all()


@pytest.mark.parametrize(("loc", "log_scale"), [(0.1, math.log(0.05)), (-0.95, math.log(0.1))])
def test_single_logistic_sampling_frequencies_match_the_pmf(loc: float, log_scale: float) -> None:
    """200k draws of one pixel; each level's frequency within 5 binomial standard errors of its mass."""
    torch.manual_seed(0)
    n = 200_000
    p = DiscretizedLogisticMixtureLikelihood(num_mixtures=1)(grey_params([0.0], [loc], [log_scale]))
    x = p.sample((n,))
    assert x.shape == (n, 1, 1, 1, 1)
    counts = torch.bincount(torch.round(x.flatten() * 255).long(), minlength=256).to(D)
    pmf = p.log_prob(all_levels().reshape(256, 1, 1, 1, 1))[:, 0].exp()
    assert ((counts / n - pmf).abs() <= 5 * (pmf * (1 - pmf) / n).sqrt() + 1e-5).all()


def test_rgb_mixture_sampling_frequencies_match_the_joint_pmf() -> None:
    """With 4 levels the joint RGB pmf has 64 cells: 200k draws (mixture, coupling, edges) against it."""
    torch.manual_seed(0)
    n, levels = 200_000, 4
    lik = DiscretizedLogisticMixtureLikelihood(num_mixtures=2, levels=levels)
    params = rgb_params(
        [0.3, -0.3],
        [[-0.5, 0.4], [0.2, -0.1], [0.0, 0.3]],
        [[-1.0, -0.5], [-1.5, -0.8], [-1.2, -0.7]],
        [[1.0, -0.8], [0.5, 0.2], [-1.5, 0.9]],
    )
    p = lik(params)
    x = p.sample((n,)).reshape(n, 3)
    codes = (torch.round(x * (levels - 1)).long() * torch.tensor([levels**2, levels, 1])).sum(-1)
    counts = torch.bincount(codes, minlength=levels**3).to(D)
    grid = torch.cartesian_prod(*[torch.arange(levels, dtype=D) / (levels - 1)] * 3)
    pmf = p.log_prob(grid.reshape(-1, 1, 3, 1, 1))[:, 0].exp()
    torch.testing.assert_close(pmf.sum(), torch.ones((), dtype=D))
    assert ((counts / n - pmf).abs() <= 5 * (pmf * (1 - pmf) / n).sqrt() + 1e-5).all()


def test_changing_red_moves_green_and_blue_locations_by_the_coefficients() -> None:
    raw = [[0.8, -0.3], [1.1, 0.4], [-0.6, 2.0]]
    lik = DiscretizedLogisticMixtureLikelihood(num_mixtures=2)
    p = lik(rgb_params([0.0, 0.0], [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], [[-2.0] * 2] * 3, raw))
    c = torch.tanh(torch.tensor(raw, dtype=D))  # (coefficient, component)
    x = torch.tensor([0.2, 0.4, 0.6], dtype=D).reshape(1, 3, 1, 1)
    base = p.locations(x)[0, :, :, 0, 0]  # (K, C) in [-1, 1] units
    dr, dg = torch.tensor([0.1, 0, 0], dtype=D), torch.tensor([0, 0.1, 0], dtype=D)
    after_r = p.locations(x + dr.reshape(1, 3, 1, 1))[0, :, :, 0, 0]
    after_g = p.locations(x + dg.reshape(1, 3, 1, 1))[0, :, :, 0, 0]
    # a step of 0.1 in data units is 0.2 in [-1, 1] units: G moves by c0 * 0.2, B by c1 * 0.2, then c2 * 0.2
    torch.testing.assert_close(after_r - base, torch.stack([0 * c[0], c[0] * 0.2, c[1] * 0.2], -1))
    torch.testing.assert_close(after_g - base, torch.stack([0 * c[0], 0 * c[0], c[2] * 0.2], -1))
    # ... the same in data units: G's location moves by c0 times R's change
    torch.testing.assert_close((after_r - base)[:, 1] / 2, c[0] * 0.1)


def test_grey_mean_is_within_half_a_level_of_the_discretised_expectation() -> None:
    lik = DiscretizedLogisticMixtureLikelihood(num_mixtures=2)
    params = torch.tensor(
        [
            [0.5, -0.5, -0.2, 0.7, -3.0, -2.0],
            [0.0, 1.0, -0.98, 0.999, -6.0, -4.0],
            [1.0, 0.0, 0.3, 2.0, -1.0, 0.5],
        ],
        dtype=D,
    ).reshape(3, 6, 1, 1)
    p = lik(params)
    levels = all_levels()
    pmf = p.log_prob(levels.reshape(256, 1, 1, 1, 1)).exp()  # (256, 3)
    exact = (levels[:, None] * pmf).sum(0)
    assert ((p.mean.flatten() - exact).abs() <= 0.5 / 255).all()


def test_rgb_mean_matches_monte_carlo_when_the_clamp_is_inactive() -> None:
    """Narrow components inside the range: the plug-in mean of G and B is the true mean up to rounding."""
    torch.manual_seed(0)
    lik = DiscretizedLogisticMixtureLikelihood(num_mixtures=2)
    params = rgb_params(
        [0.2, -0.4],
        [[-0.2, 0.3], [0.1, -0.1], [0.0, 0.2]],
        [[-3.0, -2.5], [-3.0, -3.5], [-2.8, -3.0]],
        [[1.0, -0.5], [0.4, 0.3], [-0.6, 0.8]],
    )
    p = lik(params)
    n = 100_000
    x = p.sample((n,)).reshape(n, 3)
    se = x.std(0) / math.sqrt(n)
    assert ((p.mean.flatten() - x.mean(0)).abs() <= 5 * se + 0.5 / 255).all()


def test_num_params_layout_and_config() -> None:
    lik = instantiate(OmegaConf.load(CONF / "likelihood" / "discretized_logistic.yaml"))()
    assert isinstance(lik, DiscretizedLogisticMixtureLikelihood)
    assert (lik.num_mixtures, lik.levels, lik.num_params(1), lik.num_params(3)) == (10, 256, 30, 100)
    with pytest.raises(ConfigError):
        lik.num_params(2)
    p = lik(torch.randn(5, 100, 4, 3))
    require_event_shape(p, 5, (3, 4, 3))
    assert p.sample().shape == (5, 3, 4, 3) and p.mean.shape == (5, 3, 4, 3)
    assert p.log_prob(torch.rand(5, 3, 4, 3)).shape == (5,)
