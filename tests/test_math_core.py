"""The core math with numbers: KLs and log-probs against torch references, the IS-NLL against an exact marginal,
the IWAE bound tightening with k, the ELBO objective against its formula, schedules and diagnostics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, MultivariateNormal, Normal, kl_divergence

from vae_experiments.distributions.likelihoods import BernoulliLikelihood, GaussianLikelihood
from vae_experiments.distributions.posteriors import DiagonalGaussianPosterior
from vae_experiments.distributions.priors import StandardNormalPrior
from vae_experiments.metrics.diagnostics import PosteriorDiagnostics
from vae_experiments.metrics.nll import importance_sampled_log_likelihood
from vae_experiments.model import VAE, closed_form_kl
from vae_experiments.objectives.elbo import ELBO
from vae_experiments.objectives.iwae import IWAE
from vae_experiments.schedules import Cosine, Cyclic, Linear


def test_diagonal_kl_matches_dense_multivariate_normal() -> None:
    d = 7
    posterior = DiagonalGaussianPosterior(in_features=5, latent_dim=d).double()
    q = posterior(torch.randn(4, 5, dtype=torch.float64))
    prior = StandardNormalPrior(d).double()
    kl = closed_form_kl(q, prior)
    mu, std = q.base_dist.loc, q.base_dist.scale
    dense = kl_divergence(
        MultivariateNormal(mu, torch.diag_embed(std**2)),
        MultivariateNormal(torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)),
    )
    assert kl is not None
    torch.testing.assert_close(kl.double(), dense, rtol=1e-5, atol=1e-6)


def test_softplus_posterior_variance_has_floor() -> None:
    posterior = DiagonalGaussianPosterior(in_features=3, latent_dim=2, scale="softplus", min_var=1e-5)
    with torch.no_grad():
        posterior.head.weight.zero_()
        posterior.head.bias.fill_(-100.0)  # softplus(-100) ~ 0: the variance is the floor
    q = posterior(torch.randn(1, 3))
    torch.testing.assert_close(q.base_dist.scale.pow(2), torch.full((1, 2), 1e-5))


def test_standard_normal_prior_log_prob() -> None:
    z = torch.randn(6, 4)
    expected = Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(StandardNormalPrior(4).log_prob(z), expected)


def test_bernoulli_log_prob_sums_pixels() -> None:
    logits = torch.randn(3, 1, 4, 4)
    x = torch.randint(0, 2, (3, 1, 4, 4)).float()
    dist = BernoulliLikelihood()(logits)
    expected = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(dist.log_prob(x), expected)
    torch.testing.assert_close(dist.mean, torch.sigmoid(logits))


@pytest.mark.parametrize("sigma", ["fixed", "learned", "per_pixel"])
def test_gaussian_log_prob_against_normal(sigma: str) -> None:
    lik = GaussianLikelihood(sigma=sigma, sigma_init=0.3)
    params = torch.randn(2, lik.num_params(3), 5, 5)
    x = torch.rand(2, 3, 5, 5)
    if sigma == "per_pixel":
        mu, scale = params[:, :3], nn.functional.softplus(params[:, 3:]) + 1e-3
    else:
        mu, scale = params, torch.full_like(params, 0.3)
    expected = Normal(mu, scale).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik(params).log_prob(x), expected)
    assert (sigma == "learned") == any(True for _ in lik.parameters())


class _Linear(nn.Module):
    """A linear encoder or (non-autoregressive) decoder."""

    autoregressive = False

    def __init__(self, layer: nn.Linear, out_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.out_shape = out_shape
        self.out_features = layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x.flatten(1))
        return y if self.out_shape is None else y.view(-1, *self.out_shape)


class _ExactGaussianPosterior(nn.Module):
    """q(z|x) = N(A x + c, diag(v)): a diagonal Gaussian with fixed, slightly inflated variances."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor, var: torch.Tensor) -> None:
        super().__init__()
        self.a, self.c, self.var = a, c, var

    def forward(self, x: torch.Tensor) -> torch.distributions.Distribution:
        mu = x @ self.a.T + self.c
        return torch.distributions.Independent(Normal(mu, self.var.sqrt().expand_as(mu)), 1)


def _linear_gaussian_vae(
    d: int = 2, D: int = 4, sigma: float = 0.5, dtype: torch.dtype = torch.float64
) -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """p(z) = N(0, I), p(x|z) = N(W z + b, sigma^2 I): the marginal is N(b, W W^T + sigma^2 I) in closed form.

    Built in float64; ``dtype`` is the precision of the model returned (W and b are returned in float64)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(D, d, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    # exact posterior: Sigma = (I + W^T W / s^2)^-1, mean = Sigma W^T (x - b) / s^2
    s2 = sigma**2
    post_cov = torch.linalg.inv(torch.eye(d, dtype=torch.float64) + w.T @ w / s2)
    a = post_cov @ w.T / s2
    var = 1.5 * post_cov.diagonal()  # wider than the true marginals: finite-variance importance weights
    decoder = nn.Linear(d, D).double()
    with torch.no_grad():
        decoder.weight.copy_(w)
        decoder.bias.copy_(b)
    lik = GaussianLikelihood(sigma="fixed", sigma_init=sigma).double()
    model = VAE(
        encoder=nn.Identity(),
        posterior=_ExactGaussianPosterior(a.to(dtype), (-a @ b).to(dtype), var.to(dtype)),
        prior=StandardNormalPrior(d).double(),
        decoder=_Linear(decoder),
        likelihood=lik,
        data_shape=(D,),
        latent_dim=d,
    )
    return model.to(dtype), w, b


def test_importance_sampled_nll_matches_exact_marginal() -> None:
    model, w, b = _linear_gaussian_vae()
    x = torch.randn(16, 4, dtype=torch.float64) * 2
    exact = MultivariateNormal(b, w @ w.T + 0.25 * torch.eye(4, dtype=torch.float64)).log_prob(x)
    torch.manual_seed(0)
    estimate = importance_sampled_log_likelihood(model, x, k=4000, max_rows=16 * 500)  # 8 chunks
    assert (estimate - exact).abs().max() < 0.02
    # the ELBO (k = 1) is visibly looser than the IS estimate: the check above is not vacuous
    elbo = model.terms(x, 2000).log_weights.mean(0)  # the ELBO, averaged over many samples
    assert (exact - elbo).mean() > 0.05


def test_iwae_bound_non_decreasing_in_k() -> None:
    model, w, b = _linear_gaussian_vae()
    x = torch.randn(64, 4, dtype=torch.float64) * 2
    exact = MultivariateNormal(b, w @ w.T + 0.25 * torch.eye(4, dtype=torch.float64)).log_prob(x).mean()
    torch.manual_seed(1)
    bounds = []
    for k in (1, 2, 8, 64):
        reps = torch.stack([-IWAE(k).loss(model, x)[0] for _ in range(60)])
        bounds.append(reps.mean())
    diffs = torch.diff(torch.stack(bounds))
    assert (diffs > 0).all(), bounds
    assert bounds[-1] < exact + 1e-3  # a lower bound on log p(x)


def test_iwae_with_k1_is_the_elbo() -> None:
    model, _, _ = _linear_gaussian_vae()
    x = torch.randn(8, 4, dtype=torch.float64)
    torch.manual_seed(5)
    iwae = IWAE(1).loss(model, x)[0]
    torch.manual_seed(5)
    t = model.terms(x, 1)
    torch.testing.assert_close(iwae, -t.log_weights.mean())


def _tiny_vae() -> VAE:
    torch.manual_seed(0)
    return VAE(
        encoder=_Linear(nn.Linear(6, 8)),
        posterior=DiagonalGaussianPosterior(8, 3),
        prior=StandardNormalPrior(3),
        decoder=_Linear(nn.Linear(3, 6), (1, 2, 3)),
        likelihood=BernoulliLikelihood(),
        data_shape=(1, 2, 3),
        latent_dim=3,
    )


def test_elbo_loss_equals_formula_with_beta_and_free_bits() -> None:
    model = _tiny_vae()
    x = torch.randint(0, 2, (5, 1, 2, 3)).float()
    lam, beta = 0.2, 3.0
    torch.manual_seed(11)
    loss, logs = ELBO(beta=beta, free_bits=lam).loss(model, x)
    # the same sample by hand
    torch.manual_seed(11)
    q = model.encode(x)
    z = q.rsample()
    logits = model.decoder(z)
    log_px = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    mu, std = q.base_dist.loc, q.base_dist.scale
    kl_dim = 0.5 * (mu**2 + std**2 - 1 - 2 * std.log())  # KL(N(mu, s^2) || N(0, 1)) per dimension
    expected = -log_px.mean() + beta * kl_dim.mean(0).clamp(min=lam).sum()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logs["elbo"], (log_px - kl_dim.sum(1)).mean())


def test_elbo_follows_schedule() -> None:
    model = _tiny_vae()
    x = torch.randint(0, 2, (4, 1, 2, 3)).float()
    objective = ELBO(beta=Linear(start=0.0, end=2.0, steps=10))
    for step, beta in ((0, 0.0), (5, 1.0), (50, 2.0)):
        objective.set_step(step)
        assert objective.loss(model, x)[1]["beta"] == beta


def test_schedules() -> None:
    assert Linear(0, 1, 10, delay=5)(5) == 0 and Linear(0, 1, 10, delay=5)(10) == 0.5
    cos = Cosine(1.0, 0.0, 100)
    assert cos(0) == pytest.approx(1.0) and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    cyc = Cyclic(0.0, 1.0, period=10, ratio=0.5)
    assert [cyc(s) for s in (0, 2, 5, 9, 10, 12)] == pytest.approx([0, 0.4, 1, 1, 0, 0.4])


def test_active_units_and_kl_per_dim() -> None:
    metric = PosteriorDiagnostics(latent_dim=3)
    means = torch.stack([torch.randn(500), 0.05 * torch.randn(500), torch.zeros(500)], 1)
    kl = torch.rand(500, 3)
    for chunk in range(5):
        metric.update(means[chunk * 100 : (chunk + 1) * 100], kl[chunk * 100 : (chunk + 1) * 100])
    out = metric.compute()
    torch.testing.assert_close(out["activity"].float(), means.var(0), rtol=1e-5, atol=1e-7)
    assert out["active_units"] == 1  # var(0.05 N) = 0.0025 < 0.01
    torch.testing.assert_close(out["kl_per_dim"].float(), kl.mean(0))


def test_bits_per_dim() -> None:
    from vae_experiments.metrics.nll import bits_per_dim

    assert float(bits_per_dim(torch.tensor(784 * math.log(2)), 784)) == pytest.approx(1.0)
