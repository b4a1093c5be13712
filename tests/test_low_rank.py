"""SOS-VAE's low-rank-plus-diagonal likelihood vs a dense Gaussian, Monte Carlo and its channel layout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.distributions import MultivariateNormal

from vae_experiments.contracts import check_event
from vae_experiments.distributions.low_rank import LowRankGaussianLikelihood

CONF = Path(__file__).resolve().parents[1] / "conf"
C, H, W, R = 2, 3, 3, 2
N = C * H * W


def dense(lik: LowRankGaussianLikelihood, params: torch.Tensor) -> MultivariateNormal:
    """The same Gaussian built by hand from the documented layout, with the N x N covariance."""
    b = params.shape[0]
    mean = params[:, :C].reshape(b, N)
    factor = params[:, C : C + R * C].reshape(b, R, N).transpose(1, 2)
    if lik.diagonal == "learned":
        diag = F.softplus(params[:, C + R * C :]).reshape(b, N) + lik.min_diag
    else:
        diag = torch.full_like(mean, lik.min_diag)
    return MultivariateNormal(mean, factor @ factor.transpose(1, 2) + torch.diag_embed(diag))


@pytest.mark.parametrize("diagonal", ["learned", "fixed"])
def test_log_prob_and_entropy_equal_the_dense_gaussian(diagonal: str) -> None:
    torch.manual_seed(0)
    lik = LowRankGaussianLikelihood(rank=R, diagonal=diagonal, min_diag=0.05)
    params = torch.randn(4, lik.num_params(C), H, W, dtype=torch.float64)
    p, ref = lik(params), dense(lik, params)
    check_event(p, 4, (C, H, W))
    x = torch.rand(4, C, H, W, dtype=torch.float64)
    torch.testing.assert_close(p.log_prob(x), ref.log_prob(x.reshape(4, N)), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p.entropy(), ref.entropy(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(p.mean, params[:, :C])
    torch.testing.assert_close(p.variance.reshape(4, N), ref.covariance_matrix.diagonal(dim1=1, dim2=2))


def test_num_params_follows_the_diagonal_option() -> None:
    assert LowRankGaussianLikelihood(rank=5, diagonal="fixed").num_params(3) == 3 * 6
    assert LowRankGaussianLikelihood(rank=5, diagonal="learned").num_params(3) == 3 * 7
    with pytest.raises(ValueError, match="multiple of 6"):
        LowRankGaussianLikelihood(rank=5)(torch.zeros(1, 20, 2, 2))


def test_fixed_diagonal_is_the_constant_and_learned_is_softplus_plus_min() -> None:
    params = torch.randn(2, C * (2 + R), H, W)
    fixed = LowRankGaussianLikelihood(rank=R, diagonal="fixed", min_diag=1e-5)(params[:, : C * (1 + R)])
    assert torch.equal(fixed.mvn.cov_diag, torch.full((2, N), 1e-5))
    learned = LowRankGaussianLikelihood(rank=R, diagonal="learned", min_diag=1e-5)(params)
    torch.testing.assert_close(learned.mvn.cov_diag, F.softplus(params[:, C * (1 + R) :]).reshape(2, N) + 1e-5)


def test_empirical_covariance_of_samples_is_low_rank_plus_diagonal() -> None:
    """200k draws; per entry the sample covariance has std sqrt((S_ii S_jj + S_ij^2) / n): allow 5 of them."""
    torch.manual_seed(1)
    lik = LowRankGaussianLikelihood(rank=R, diagonal="learned", min_diag=0.01)
    params = torch.randn(1, lik.num_params(C), H, W, dtype=torch.float64)
    p, ref = lik(params), dense(lik, params)
    n = 200_000
    x = p.sample((n,))
    assert x.shape == (n, 1, C, H, W)
    cov = ref.covariance_matrix[0]
    emp = torch.cov(x.reshape(n, N).T)
    se = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov.pow(2)) / n).sqrt()
    assert ((emp - cov).abs() <= 5 * se).all()
    assert ((x.mean(0)[0] - p.mean[0]).abs() <= 5 * (p.variance[0] / n).sqrt()).all()


@pytest.mark.parametrize(("r", "c", "h", "w"), [(0, 0, 0, 0), (1, 0, 2, 1), (0, 1, 1, 2), (1, 1, 2, 2)])
def test_factor_channel_layout(r: int, c: int, h: int, w: int) -> None:
    """Channel C + r*C + c at pixel (h, w) is column r of P at the flat index c*H*W + h*W + w."""
    lik = LowRankGaussianLikelihood(rank=R)
    params = torch.zeros(1, lik.num_params(C), H, W)
    params[0, C + r * C + c, h, w] = 3.0
    factor = lik(params).mvn.cov_factor[0]
    expected = torch.zeros(N, R)
    expected[c * H * W + h * W + w, r] = 3.0
    assert torch.equal(factor, expected)


@pytest.mark.parametrize("diagonal", ["learned", "fixed"])
def test_stabilize_init_gives_mean_one_half_and_tiny_factor(diagonal: str) -> None:
    torch.manual_seed(0)
    lik = LowRankGaussianLikelihood(rank=4, diagonal=diagonal)
    conv = nn.Conv2d(16, lik.num_params(3), kernel_size=1)
    lik.init_output_layer(conv)
    assert conv.bias is not None
    features = torch.randn(2, 16, 5, 6)
    p = lik(conv(features))
    torch.testing.assert_close(p.mean, torch.full((2, 3, 5, 6), 0.5), rtol=0, atol=1e-3)
    assert p.mvn.cov_factor.abs().max() < 1e-3
    if diagonal == "learned":
        torch.testing.assert_close(conv.bias[3 * 5 :], torch.full((3,), math.log(math.expm1(1e-5))))
        assert F.softplus(conv.bias[3 * 5 :]).sub(1e-5).abs().max() < 1e-10
        assert (p.mvn.cov_diag > 1e-5).all() and (p.mvn.cov_diag < 1e-3).all()
    else:
        assert torch.equal(p.mvn.cov_diag, torch.full((2, 3 * 5 * 6), 1e-5))


def test_float64_option_agrees_with_the_dense_reference_and_returns_float32() -> None:
    """The released setting (diagonal 1e-5) is stiff: double precision matches the dense float64 Gaussian."""
    torch.manual_seed(0)
    params = torch.randn(3, C * (1 + R), H, W) * 0.1
    x = params[:, :C] + 1e-3 * torch.randn(3, C, H, W)
    lik64 = LowRankGaussianLikelihood(rank=R, float64=True)
    lp64 = lik64(params).log_prob(x)
    assert lp64.dtype == torch.float32
    expected = dense(lik64, params.double()).log_prob(x.double().reshape(3, N))
    torch.testing.assert_close(lp64.double(), expected, rtol=1e-6, atol=0)
    lp32 = LowRankGaussianLikelihood(rank=R)(params).log_prob(x)
    torch.testing.assert_close(lp32.double(), expected, rtol=1e-3, atol=0)


def test_hydra_config_builds_the_released_setting() -> None:
    lik = instantiate(OmegaConf.load(CONF / "likelihood" / "low_rank_gaussian.yaml"))()
    assert isinstance(lik, LowRankGaussianLikelihood)
    assert (lik.rank, lik.diagonal, lik.min_diag, lik.float64, lik.levels) == (5, "fixed", 1e-5, False, None)


def test_diag_init_sets_the_learned_diagonal_at_the_start() -> None:
    lik = LowRankGaussianLikelihood(rank=2, diagonal="learned", min_diag=1e-5, diag_init=0.01)
    conv = torch.nn.Conv2d(4, lik.num_params(1), 1)
    lik.init_output_layer(conv)
    torch.testing.assert_close(F.softplus(conv.bias[3:]), torch.tensor([0.01]))
    with pytest.raises(ValueError, match="diag_init"):
        LowRankGaussianLikelihood(diag_init=0.0)


def test_log_prob_under_bf16_autocast_equals_the_fp32_one() -> None:
    """trainer=gpu and trainer=cpu_bf16 run the likelihood under bf16 autocast; the capacitance I + P^T D^-1 P of
    the released fixed diagonal (1e-5) is far too stiff for bf16 matmuls (its Cholesky fails or the density is
    wrong), so the likelihood computes in fp32 whatever the autocast."""
    torch.manual_seed(0)
    lik = LowRankGaussianLikelihood(rank=5, diagonal="fixed", min_diag=1e-5)
    params = 0.1 * torch.randn(2, lik.num_params(1), 8, 8)
    x = torch.rand(2, 1, 8, 8)
    reference = lik(params).log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        px = lik(params.bfloat16())
        log_prob, entropy, sample = px.log_prob(x), px.entropy(), px.rsample()
    assert log_prob.dtype == entropy.dtype == sample.dtype == torch.float32
    torch.testing.assert_close(log_prob, lik(params.bfloat16().float()).log_prob(x), rtol=1e-5, atol=1e-3)
    assert torch.isfinite(reference).all()
