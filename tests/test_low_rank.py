"""SOS-VAE's low-rank-plus-diagonal likelihood vs a dense Gaussian (float64, and float32 outputs at the released
diagonal 1e-5 up to CelebA size), its gradient, a failed factorisation, Monte Carlo and its channel layout."""

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

from vae_experiments.contracts import require_event_shape
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
    require_event_shape(p, 4, (C, H, W))
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
    assert torch.equal(fixed.cov_diag, torch.full((2, N), 1e-5, dtype=torch.float64))
    learned = LowRankGaussianLikelihood(rank=R, diagonal="learned", min_diag=1e-5)(params)
    expected = F.softplus(params[:, C * (1 + R) :].double()).reshape(2, N) + 1e-5
    torch.testing.assert_close(learned.cov_diag, expected, rtol=1e-15, atol=0)


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
    factor = lik(params).cov_factor[0]
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
    assert p.cov_factor.abs().max() < 1e-3
    if diagonal == "learned":
        torch.testing.assert_close(conv.bias[3 * 5 :], torch.full((3,), math.log(math.expm1(1e-5))))
        assert F.softplus(conv.bias[3 * 5 :]).sub(1e-5).abs().max() < 1e-10
        assert (p.cov_diag > 1e-5).all() and (p.cov_diag < 1e-3).all()
    else:
        assert torch.equal(p.cov_diag, torch.full((2, 3 * 5 * 6), 1e-5, dtype=torch.float64))


def near_collinear(shape: tuple[int, int, int], rank: int, batch: int, spread: float, seed: int) -> torch.Tensor:
    """Decoder outputs (B, C (1 + R), H, W) whose R factor columns are one shared column plus ``spread`` times
    independent ones (0.1 x N(0, 1) entries): at ``spread`` << 1 the factor is nearly rank one."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    mean = torch.rand(batch, c, h, w, generator=g)
    shared = torch.randn(batch, 1, c, h, w, generator=g)
    factor = 0.1 * (shared + spread * torch.randn(batch, rank, c, h, w, generator=g))
    return torch.cat([mean, factor.reshape(batch, rank * c, h, w)], dim=1)


def draw(params: torch.Tensor, rank: int, min_diag: float, seed: int) -> torch.Tensor:
    """One image per batch row from N(m, P P^T + d I), drawn in float64 and rounded to float32 like data."""
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = params.shape
    c = params.shape[1] // (1 + rank)
    p64 = params.double()
    factor = p64[:, c:].reshape(b, rank, c * h * w)
    weights = torch.randn(b, 1, rank, generator=g, dtype=torch.float64)
    noise = math.sqrt(min_diag) * torch.randn(b, c * h * w, generator=g, dtype=torch.float64)
    return (p64[:, :c].flatten(1) + (weights @ factor).squeeze(1) + noise).reshape(b, c, h, w).float()


def svd_log_prob(params: torch.Tensor, x: torch.Tensor, rank: int, min_diag: float) -> torch.Tensor:
    """log N(x; m, P P^T + d I) in float64 through the thin SVD W = D^-1/2 P = U S V^T, a route independent of the
    capacitance: log det = N log d + sum log(1 + s^2), and the Mahalanobis distance as a sum of non-negative terms,
    ||u - U U^T u||^2 + sum_j (U^T u)_j^2 / (1 + s_j^2), with u = D^-1/2 (x - m)."""
    b, _, h, w = params.shape
    c = params.shape[1] // (1 + rank)
    n = c * h * w
    p64 = params.double()
    u = (x.double().reshape(b, n) - p64[:, :c].reshape(b, n)) / math.sqrt(min_diag)
    left, s, _ = torch.linalg.svd(p64[:, c:].reshape(b, rank, n).mT / math.sqrt(min_diag), full_matrices=False)
    proj = (u.unsqueeze(1) @ left).squeeze(1)
    residual = u - (left @ proj.unsqueeze(-1)).squeeze(-1)
    mahalanobis = residual.pow(2).sum(-1) + (proj.pow(2) / (1 + s**2)).sum(-1)
    log_det = n * math.log(min_diag) + torch.log1p(s**2).sum(-1)
    return -0.5 * (n * math.log(2 * math.pi) + log_det + mahalanobis)


@pytest.mark.parametrize(
    ("shape", "spread"), [((3, 8, 8), 1.0), ((3, 8, 8), 1e-2), ((3, 8, 8), 1e-4), ((3, 32, 32), 1e-4)]
)
def test_float32_log_prob_equals_the_dense_float64_gaussian_at_the_released_diagonal(
    shape: tuple[int, int, int], spread: float
) -> None:
    """Rank 25, d = 1e-5, generic and nearly collinear factors, float32 decoder outputs: log-density and entropy are
    the exact values rounded to float32 (~700 and ~13,000 nats here). torch's float32 ``LowRankMultivariateNormal``
    was 0.2-35 nats off on these cases, or its Cholesky raised."""
    rank, n = 25, shape[0] * shape[1] * shape[2]
    params = near_collinear(shape, rank, batch=2, spread=spread, seed=0)
    x = draw(params, rank, 1e-5, seed=1)
    p = LowRankGaussianLikelihood(rank=rank)(params)
    log_prob, entropy = p.log_prob(x), p.entropy()
    assert log_prob.dtype == entropy.dtype == torch.float32
    p64 = params.double()
    factor = p64[:, 3:].reshape(2, rank, n).mT
    cov = factor @ factor.mT + 1e-5 * torch.eye(n, dtype=torch.float64)
    exact = MultivariateNormal(p64[:, :3].reshape(2, n), cov, validate_args=False)  # its check is an N^3 Cholesky
    torch.testing.assert_close(log_prob.double(), exact.log_prob(x.double().reshape(2, n)), rtol=2**-23, atol=0)
    torch.testing.assert_close(entropy.double(), exact.entropy(), rtol=2**-23, atol=0)


@pytest.mark.parametrize("spread", [1.0, 1e-4])
def test_float32_log_prob_is_within_a_tenth_of_a_nat_at_celeba_size(spread: float) -> None:
    """N = 3 x 218 x 178 = 116,412, rank 25, d = 1e-5 (the released model): log p ~ 5e5 nats, right to 0.1 nat
    against a float64 SVD of D^-1/2 P. The float32 ``LowRankMultivariateNormal`` was 100-3,000 nats off here."""
    rank, shape = 25, (3, 218, 178)
    params = near_collinear(shape, rank, batch=2, spread=spread, seed=2)
    x = draw(params, rank, 1e-5, seed=3)
    log_prob = LowRankGaussianLikelihood(rank=rank)(params).log_prob(x)
    exact = svd_log_prob(params, x, rank, 1e-5)
    assert exact.min() > 5e5
    assert (log_prob.double() - exact).abs().max() < 0.1


def test_gradient_equals_the_dense_float64_gaussian_gradient() -> None:
    """d log p / d(decoder output) for float32 outputs, nearly collinear factor, d = 1e-5, against autograd through
    the dense float64 Gaussian: equal to float32 rounding of the gradient (entries up to ~1e5 here)."""
    rank, shape = 5, (3, 8, 8)
    params = near_collinear(shape, rank, batch=2, spread=1e-3, seed=4)
    x = draw(params, rank, 1e-5, seed=5)
    p32 = params.clone().requires_grad_()
    LowRankGaussianLikelihood(rank=rank)(p32).log_prob(x).sum().backward()
    assert p32.grad is not None and p32.grad.dtype == torch.float32
    p64 = params.double().requires_grad_()
    n = 3 * 8 * 8
    factor = p64[:, 3:].reshape(2, rank, n).mT
    cov = factor @ factor.mT + 1e-5 * torch.eye(n, dtype=torch.float64)
    exact = MultivariateNormal(p64[:, :3].reshape(2, n), cov, validate_args=False)
    exact.log_prob(x.double().reshape(2, n)).sum().backward()
    assert p64.grad is not None
    scale = p64.grad.abs().max()
    assert scale > 1e3
    torch.testing.assert_close(p32.grad.double(), p64.grad, rtol=1e-6, atol=1e-6 * scale)


def test_a_failed_factorisation_is_nan_without_an_exception_or_a_host_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A capacitance that cannot be factorised makes that row's log-density and entropy NaN, for the runner's
    non-finite-loss guard: no exception, no value read back to the host (a GPU wait per step), the other rows intact.
    Rows: a NaN decoder output, an infinite one, and three identical factor columns of size ~1e7 (finite, but
    K = I + W^T W ~ 1e20 is not numerically positive definite in float64: Cholesky meets a zero or negative pivot)."""
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):

        def refuse(*args: object, name: str = name) -> None:
            raise AssertionError(f"host read Tensor.{name}")

        monkeypatch.setattr(torch.Tensor, name, refuse)
    params = near_collinear((1, 4, 4), 3, batch=4, spread=1.0, seed=6)
    params[0, 1, 0, 0] = torch.nan
    params[1, 2, 1, 1] = torch.inf
    params[2, 1:] = 1e7 * torch.rand(4, 4, generator=torch.Generator().manual_seed(1))
    p = LowRankGaussianLikelihood(rank=3)(params)
    log_prob, entropy = p.log_prob(params[:, :1]), p.entropy()
    monkeypatch.undo()
    assert torch.isnan(log_prob[:3]).all() and torch.isnan(entropy[:3]).all()
    assert torch.isfinite(log_prob[3]) and torch.isfinite(entropy[3])


def test_hydra_config_builds_the_released_setting() -> None:
    lik = instantiate(OmegaConf.load(CONF / "likelihood" / "low_rank_gaussian.yaml"))()
    assert isinstance(lik, LowRankGaussianLikelihood)
    assert (lik.rank, lik.diagonal, lik.min_diag, lik.levels) == (5, "fixed", 1e-5, None)


def test_diag_init_sets_the_learned_diagonal_at_the_start() -> None:
    lik = LowRankGaussianLikelihood(rank=2, diagonal="learned", min_diag=1e-5, diag_init=0.01)
    conv = torch.nn.Conv2d(4, lik.num_params(1), 1)
    lik.init_output_layer(conv)
    torch.testing.assert_close(F.softplus(conv.bias[3:]), torch.tensor([0.01]))
    with pytest.raises(ValueError, match="diag_init"):
        LowRankGaussianLikelihood(diag_init=0.0)


def test_bf16_autocast_changes_nothing() -> None:
    """trainer=gpu and trainer=cpu_bf16 run the likelihood under bf16 autocast on bf16 decoder outputs: the
    log-density, entropy and gradient (rounded to the bf16 leaf) equal, bit for bit, those of the same outputs in fp32
    without autocast (autocast is off around the algebra, which runs in float64), and come back in fp32. Rank 25,
    d = 1e-5, nearly collinear factor: bf16 matmuls would lose hundreds of nats or the positive-definiteness of K."""
    rank = 25
    params = near_collinear((3, 8, 8), rank, batch=2, spread=1e-2, seed=7).bfloat16()
    x = draw(params.float(), rank, 1e-5, seed=8)
    lik = LowRankGaussianLikelihood(rank=rank)
    results = []
    for autocast in (True, False):
        leaf = (params if autocast else params.float()).clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            px = lik(leaf)
            log_prob, entropy, sample = px.log_prob(x), px.entropy(), px.rsample()
        log_prob.sum().backward()
        assert log_prob.dtype == entropy.dtype == sample.dtype == torch.float32
        assert leaf.grad is not None
        results.append((log_prob, entropy, leaf.grad.bfloat16()))  # the bf16 leaf gets a bf16 gradient
    for under_autocast, plain in zip(*results, strict=True):
        assert torch.equal(under_autocast, plain)
