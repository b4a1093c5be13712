"""rho-VAE's AR(1) posterior against dense Gaussians, Monte Carlo and the reference code's formulas."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from scipy.linalg import toeplitz
from torch import Tensor
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from vae_experiments.contracts import require_event_shape
from vae_experiments.data import sources
from vae_experiments.distributions.priors import StandardNormalPrior
from vae_experiments.distributions.rho import (
    AR1Normal,
    RandomWalkNormal,
    RhoPosterior,
    ar1_filter,
    log1m_tanh_sq,
)
from vae_experiments.model import closed_form_kl
from vae_experiments.module import VAEModule
from vae_experiments.train import build, train

CONF = Path(__file__).resolve().parents[1] / "conf"
RHOS = [-0.999, -0.5, 0.0, 0.3, 0.999]
DIMS = [1, 2, 10, 64]


def std_normal(d: int, dtype: torch.dtype = torch.float64) -> Independent:
    return Independent(Normal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype)), 1)


def make_q(d: int, rho: float, seed: int = 0) -> AR1Normal:
    """Three examples sharing rho, with different s and random means (float64)."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(3, d, generator=g, dtype=torch.float64)
    rho_logit = torch.full((3,), math.atanh(rho), dtype=torch.float64)
    log_s = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64).log()
    return AR1Normal(loc, rho_logit, log_s)


def dense(q: AR1Normal) -> MultivariateNormal:
    """The same Gaussian with the covariance s T(rho) built independently with scipy's Toeplitz."""
    rho, s = q.rho, q.log_s.exp()
    lags = torch.arange(q.dim).double().numpy()
    cov = torch.stack([si * torch.from_numpy(toeplitz(ri.item() ** lags)) for ri, si in zip(rho, s, strict=True)])
    return MultivariateNormal(q.loc, covariance_matrix=cov)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("rho", RHOS)
def test_kl_log_prob_entropy_match_dense_gaussian(d: int, rho: float) -> None:
    q = make_q(d, rho)
    ref = dense(q)
    torch.testing.assert_close(q.covariance_matrix, ref.covariance_matrix, rtol=1e-12, atol=1e-12)
    # closed-form KL through the registry = torch's generic Gaussian KL
    p_dense = MultivariateNormal(torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64))
    expected = kl_divergence(ref, p_dense)
    torch.testing.assert_close(kl_divergence(q, std_normal(d)), expected, rtol=1e-9, atol=1e-9)
    # log_prob at random points and at the distribution's own samples, shape (k, B)
    z = torch.cat([torch.randn(4, 3, d, dtype=torch.float64), q.rsample((4,))])
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z), rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(q.entropy(), ref.entropy(), rtol=1e-10, atol=1e-10)


def test_kl_through_the_prior_module() -> None:
    q = make_q(5, 0.6)
    p = StandardNormalPrior(5).double().distribution()
    torch.testing.assert_close(kl_divergence(q, p), kl_divergence(q, std_normal(5)))


def test_ar1_filter_equals_the_sequential_recursion() -> None:
    x = torch.randn(2, 4, 37, dtype=torch.float64)  # not a power of two
    rho = torch.tensor([-0.9, 0.0, 0.4, 0.99], dtype=torch.float64)
    expected = [x[..., 0]]
    for j in range(1, 37):
        expected.append(rho * expected[-1] + x[..., j])
    torch.testing.assert_close(ar1_filter(x, rho), torch.stack(expected, -1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [1, 2, 7, 16])
def test_ar1_filter_gradient_is_the_reverse_filter(d: int) -> None:
    """The hand-written backward against finite differences, with rho broadcast over k = 3 samples of B = 4."""
    x = torch.randn(3, 4, d, dtype=torch.float64, requires_grad=True)
    rho = torch.tensor([-0.9, 0.0, 0.4, 0.99], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ar1_filter, (x, rho))


@pytest.mark.parametrize("reference", [False, True])
def test_empirical_moments_of_rsample(reference: bool) -> None:
    """200k draws; per entry, the sample covariance has std sqrt((C_jj C_kk + C_jk^2) / n): allow 5 of them.

    The faithful sampler ignores rho: its covariance is the random walk's s min(j, k), so Var z_j = j s.
    """
    torch.manual_seed(0)
    n, d = 200_000, 6
    loc = torch.tensor([[0.5, -1.0, 0.0, 2.0, 0.1, -0.3], [0.0] * 6], dtype=torch.float64)
    rho_logit = torch.tensor([math.atanh(-0.7), math.atanh(0.9)], dtype=torch.float64)
    log_s = torch.tensor([1.7, 0.4], dtype=torch.float64).log()
    cls = RandomWalkNormal if reference else AR1Normal
    q = cls(loc, rho_logit, log_s)
    z = q.rsample((n,))
    assert z.shape == (n, 2, d)
    if reference:
        j = torch.arange(1, d + 1, dtype=torch.float64)
        cov = log_s.exp()[:, None, None] * torch.minimum(j[:, None], j[None, :])
    else:
        cov = q.covariance_matrix
    diag = cov.diagonal(dim1=-2, dim2=-1)
    se_cov = ((diag[..., :, None] * diag[..., None, :] + cov.pow(2)) / n).sqrt()
    emp_cov = torch.stack([torch.cov(z[:, b].T) for b in range(2)])
    assert ((emp_cov - cov).abs() <= 5 * se_cov).all(), (emp_cov - cov) / se_cov
    assert ((z.mean(0) - loc).abs() <= 5 * (diag / n).sqrt()).all()
    if reference:
        torch.testing.assert_close(diag, log_s.exp()[:, None] * j)  # Var z_j = j s


@pytest.mark.parametrize(
    ("dtype", "loc_scale", "log_s"),
    [
        (torch.float32, 1.0, 0.0),
        (torch.float32, 0.0, -6.0),
        (torch.float64, 10.0, -6.0),
        (torch.float64, 1.0, 3.0),
    ],
)
@pytest.mark.parametrize("a", [50.0, -50.0])
def test_finite_values_and_gradients_at_saturated_rho(
    a: float, dtype: torch.dtype, loc_scale: float, log_s: float
) -> None:
    """float32 stays finite for moderate mu and s only: there log q of a sample is dominated by the rounding
    of z - mu (documented in ``AR1Normal.log_prob``); float64 has room for extreme mu and s as well."""
    torch.manual_seed(0)
    d = 64
    loc = (loc_scale * torch.randn(4, d, dtype=dtype)).requires_grad_()
    rho_logit = torch.full((4,), a, dtype=dtype, requires_grad=True)
    log_s = torch.full((4,), log_s, dtype=dtype, requires_grad=True)
    q = AR1Normal(loc, rho_logit, log_s)
    z = q.rsample((3,))
    kl = kl_divergence(q, std_normal(d, dtype))
    lp = q.log_prob(z)
    for value in (z, kl, lp, q.entropy()):
        assert torch.isfinite(value).all()
    (kl.sum() + lp.sum() + z.sum()).backward()
    for param in (loc, rho_logit, log_s):
        assert torch.isfinite(param.grad).all()
    # log(1 - rho^2) = 2 log 2 - 2|a| - 2 log(1 + e^{-2|a|}) ~ 2 log 2 - 100, where tanh has rounded to +-1
    assert torch.tanh(rho_logit).abs().eq(1).all()
    torch.testing.assert_close(q.log1m_rho_sq, torch.full_like(rho_logit, 2 * math.log(2) - 100))


def test_log1m_tanh_sq_matches_the_direct_formula() -> None:
    a = torch.linspace(-6, 6, 101, dtype=torch.float64)
    torch.testing.assert_close(log1m_tanh_sq(a), torch.log1p(-(torch.tanh(a) ** 2)), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "p",
    [
        Independent(Normal(torch.ones(4), torch.ones(4)), 1),
        Independent(Normal(torch.zeros(4), torch.full((4,), 2.0)), 1),
        Independent(Normal(torch.zeros(2, 4), torch.ones(2, 4)), 2),
        Independent(Normal(torch.zeros(5), torch.ones(5)), 1),
    ],
    ids=["loc-1", "scale-2", "two-event-dims", "wrong-d"],
)
@pytest.mark.parametrize("cls", [AR1Normal, RandomWalkNormal])
def test_kl_refuses_anything_but_the_standard_normal(p: Independent, cls: type[AR1Normal]) -> None:
    q = cls(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2))
    with pytest.raises(NotImplementedError):
        kl_divergence(q, p)


def test_reference_faithful_kl_sums_to_the_reference_batch_kl() -> None:
    """The authors' utils.py: 0.5 * mean_batch( sum_batch ||mu||^2 + per-example s/rho terms ), by hand."""
    d = 4
    mu = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -1.0, 0.5], [0.0, 0.2, 0.3, -0.4]]).double()
    a = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    log_s = torch.tensor([0.1, -0.5, 0.7], dtype=torch.float64)
    rho, s = torch.tanh(a), log_s.exp()
    per_example = -d * log_s - (d - 1) * torch.log(1 - rho**2) + d * (s - 1)
    reference = 0.5 * torch.mean(mu.pow(2).sum() + per_example)
    q = RandomWalkNormal(mu, a, log_s)
    kl = kl_divergence(q, std_normal(d))
    assert kl.shape == (3,)
    torch.testing.assert_close(kl.sum(), reference, rtol=1e-12, atol=1e-12)
    # ... which differs from the true batch KL (the s/rho part is down-weighted by B = 3)
    true_kl = kl_divergence(AR1Normal(mu, a, log_s), std_normal(d)).sum()
    assert not torch.isclose(kl.sum(), true_kl)


@pytest.mark.parametrize("head_hidden", [None, 6])
@pytest.mark.parametrize("reference_faithful", [False, True])
def test_posterior_heads_and_output(reference_faithful: bool, head_hidden: int | None) -> None:
    torch.manual_seed(0)
    cfg = OmegaConf.load(CONF / "posterior" / "rho.yaml")
    cfg.reference_faithful = reference_faithful
    cfg.head_hidden = head_hidden
    posterior = instantiate(cfg)(in_features=7, latent_dim=5)
    assert isinstance(posterior, RhoPosterior)
    assert posterior.valid_bound is not reference_faithful
    h = torch.randn(8, 7)
    if head_hidden is None:
        weight, bias = posterior.head.weight, posterior.head.bias
        assert weight.shape == (5 + 1 + 1, 7)
        mu, a, log_s = (h @ weight.T + bias).split([5, 1, 1], dim=-1)
    else:
        assert [branch[0].out_features for branch in posterior.head.branches] == [6, 6, 6]
        assert [branch[2].out_features for branch in posterior.head.branches] == [5, 1, 1]
        mu, a, log_s = (branch(h) for branch in posterior.head.branches)
    q = posterior(h)
    assert type(q) is (RandomWalkNormal if reference_faithful else AR1Normal)
    require_event_shape(q, 8, (5,))
    torch.testing.assert_close(q.mean, mu)
    torch.testing.assert_close(q.rho, torch.tanh(a[:, 0]))
    torch.testing.assert_close(q.variance, log_s.exp().expand(8, 5))
    z = q.rsample((3,))
    assert z.shape == (3, 8, 5)
    assert q.log_prob(z).shape == (3, 8)
    kl = kl_divergence(q, StandardNormalPrior(5).distribution())
    assert kl.shape == (8,)
    kl.sum().backward()
    assert all(p.grad is not None for p in posterior.parameters())


def test_reference_faithful_warns_at_construction(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="vae_experiments.distributions.rho"):
        RhoPosterior(7, 5)
        assert not caplog.records
        RhoPosterior(7, 5, reference_faithful=True)
    assert len(caplog.records) == 1
    assert "NOT bounds" in caplog.records[0].getMessage()


@pytest.mark.parametrize("cls", [AR1Normal, RandomWalkNormal])
def test_rsample_and_log_prob_equals_log_prob_of_the_sample(cls: type[AR1Normal]) -> None:
    """The one-pass log q (from the innovations eps) is ``log_prob`` at the sample, at moderate and extreme rho."""
    d = 12
    loc = torch.randn(4, d, dtype=torch.float64)
    rho_logit = torch.tensor([-4.0, -0.3, 0.0, 3.8], dtype=torch.float64)  # |rho| up to 0.999
    log_s = torch.tensor([-1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    q = cls(loc, rho_logit, log_s)
    torch.manual_seed(1)
    z, log_q = q.rsample_and_log_prob((5,))
    assert z.shape == (5, 4, d) and log_q.shape == (5, 4)
    torch.testing.assert_close(log_q, q.log_prob(z), rtol=1e-9, atol=1e-8)
    torch.manual_seed(1)
    torch.testing.assert_close(q.rsample((5,)), z)


# ---- the posterior inside the runner: every encoder, a flow prior, every objective, the paper's experiments ----


def one_step(cfg: DictConfig, batch: int = 16) -> tuple[VAEModule, Tensor]:
    """Build what the config describes and take one optimiser step on random data; returns the module and loss."""
    _, module = build(cfg)
    x = torch.rand(batch, *module.model.data_shape)
    optimizer = module.configure_optimizers()
    optimizer.zero_grad()
    loss, _ = module.objective.loss(module.model, x)
    loss.backward()
    grads = [p.grad for p in module.model.posterior.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    optimizer.step()
    assert torch.isfinite(loss)
    return module, loss


@pytest.mark.parametrize(
    "overrides",
    [
        ["encoder=mlp"],
        ["encoder=conv", "decoder=conv"],
        ["encoder=resnet", "decoder=resnet"],
        ["encoder=rho_cnn", "decoder=rho_cnn", "posterior.head_hidden=8", "decoder.hidden=16"],
    ],
    ids=["mlp", "conv", "resnet", "rho_cnn"],
)
def test_rho_posterior_with_every_encoder(make_cfg: Callable[..., DictConfig], overrides: list[str]) -> None:
    module, _ = one_step(make_cfg("posterior=rho", *overrides))
    assert isinstance(module.model.posterior, RhoPosterior)
    q = module.model.encode(torch.rand(3, *module.model.data_shape))
    assert type(q) is AR1Normal


def test_rho_posterior_with_a_flow_prior_uses_the_monte_carlo_kl(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg("posterior=rho", "prior=af", "prior.steps=2", "prior.hidden_units=16")
    module, _ = one_step(cfg)
    model = module.model
    x = torch.rand(5, *model.data_shape)
    q = model.encode(x)
    assert closed_form_kl(q, model.prior) is None
    t = model.terms(x, k=3, q=q)
    assert not t.analytic_kl
    assert t.kl.shape == (5,)  # per example: the Monte-Carlo estimate averages the 3 draws
    assert torch.isfinite(t.kl).all()
    torch.testing.assert_close(t.kl, (t.log_qz - t.log_pz).mean(0))
    torch.testing.assert_close(t.log_qz, q.log_prob(t.z))


OBJECTIVES = ("constrained_kl", "elbo", "iwae", "soft_free_bits", "soft_intro")


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_rho_posterior_under_every_objective(make_cfg: Callable[..., DictConfig], objective: str) -> None:
    # a deleted objective config fails here, and a new one must join OBJECTIVES
    assert {p.stem for p in (CONF / "objective").glob("*.yaml")} == set(OBJECTIVES)
    cfg = make_cfg("posterior=rho", f"objective={objective}")
    metrics = train(cfg)
    assert math.isfinite(metrics["test/elbo"]) and math.isfinite(metrics["test/nll"])
    assert metrics["test/valid_bound"] is True


TINY_CNN = ["posterior.head_hidden=8", "encoder.channels=[4,8]", "decoder.hidden=16", "decoder.channels=[8,4]"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=rho_vae"],
        ["experiment=rho_vae", "posterior=diagonal"],
        ["experiment=rho_vae", "posterior.reference_faithful=true"],
        ["experiment=rho_vae_cnn", *TINY_CNN],
        ["experiment=rho_vae_cnn", "posterior=diagonal", *TINY_CNN],
    ],
    ids=["mlp-rho", "mlp-diagonal", "mlp-faithful", "cnn-rho", "cnn-diagonal"],
)
def test_rho_experiments_run_debug_fast(make_cfg: Callable[..., DictConfig], overrides: list[str]) -> None:
    if not sources._debian_fashion_mnist():
        pytest.skip(f"Debian package dataset-fashion-mnist absent ({sources.DEBIAN_FASHION_MNIST})")
    paper = make_cfg(*overrides, fast=False)
    assert paper.dataset._target_ == "vae_experiments.data.FashionMNIST.datamodule"
    assert paper.latent_dim == 10 and paper.dataset.binarize == "none"
    assert paper.optimizer.lr == 1e-3 and paper.dataset.batch_size == 128 and paper.trainer.max_epochs == 15
    cfg = make_cfg(*overrides, "debug=fast", "dataset.eval_batch_size=16", fast=False)
    faithful = bool(cfg.posterior.get("reference_faithful", False))
    metrics = train(cfg)
    assert math.isfinite(metrics["test/loss"]) and math.isfinite(metrics["test/elbo"])
    assert metrics["test/valid_bound"] is not faithful
