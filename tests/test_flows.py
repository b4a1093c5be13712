"""The MADE of a flow step, the autoregressive-flow prior and the IAF posterior: autoregressive structure and
log-densities against brute-force Jacobians."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from vae_experiments.contracts import require_event_shape
from vae_experiments.distributions.autoregressive_step import autoregressive_step
from vae_experiments.distributions.flow_prior import AutoregressiveFlowPrior, standardize
from vae_experiments.distributions.flow_scale import LOG_SCALE_BOUND, soft_clamp_log_scale
from vae_experiments.distributions.iaf import IAFPosterior
from vae_experiments.errors import ConfigError

D = 5


def log_normal(eps: torch.Tensor) -> torch.Tensor:
    return -0.5 * (eps.pow(2).sum(-1) + eps.shape[-1] * math.log(2 * math.pi))


def log_abs_det(f, x: torch.Tensor) -> torch.Tensor:
    """log|det df/dx| per row of x (B, d), Jacobian by brute force."""
    return torch.stack([torch.linalg.slogdet(jacobian(f, row))[1] for row in x])


def made_outputs(step: nn.Module, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """The step's MADE outputs (..., d, n_params) at x (and context c)."""
    x = x if c is None else torch.cat([x, c.expand(*x.shape[:-1], -1)], -1)
    return step.hyper(x).unflatten(-1, (D, -1))


def test_made_jacobian_is_strictly_triangular_in_its_order():
    torch.manual_seed(0)
    order = torch.randperm(D)
    step = autoregressive_step(D, standardize, 2, order, context=3, hidden_units=32, activation=nn.ELU).double()
    x, c = torch.randn(D, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    jx = jacobian(lambda x_: made_outputs(step, x_, c), x)  # (D, 2, D)
    jc = jacobian(lambda c_: made_outputs(step, x, c_), c)  # (D, 2, 3)
    allowed = order[None, :] < order[:, None]  # [i, j]: output i may see input j
    for p in range(2):
        assert torch.equal(jx[:, p] != 0, allowed)
    assert (jc != 0).all()


def test_a_flow_over_one_dimension_without_context_is_refused():
    with pytest.raises(ConfigError, match="latent_dim>=2"):
        AutoregressiveFlowPrior(1)


@pytest.mark.parametrize("mean_only", [True, False])
def test_flow_prior_density_is_change_of_variables(mean_only):
    torch.manual_seed(0)
    prior = AutoregressiveFlowPrior(D, steps=3, hidden_layers=2, hidden_units=32, mean_only=mean_only).double()
    assert prior.distribution() is None
    z = 1.5 * torch.randn(4, D, dtype=torch.float64)
    eps, log_det = prior.inverse(z)
    brute = log_abs_det(lambda z_: prior.inverse(z_[None])[0][0], z)
    torch.testing.assert_close(log_det, brute)
    if mean_only:
        assert torch.equal(log_det, torch.zeros(4, dtype=torch.float64))
    else:
        assert brute.abs().min() > 1e-3  # the affine flow really scales
    torch.testing.assert_close(prior.log_prob(z), log_normal(eps) + brute)
    # sampling direction: f is the inverse of f^{-1}, and log p(f(eps)) = log u(eps) - log|det J_f(eps)|
    e = torch.randn(4, D, dtype=torch.float64)
    x = prior.forward_flow(e)
    torch.testing.assert_close(prior.inverse(x)[0], e)
    torch.testing.assert_close(prior.forward_flow(eps), z)
    fwd = log_abs_det(lambda e_: prior.forward_flow(e_[None])[0], e)
    torch.testing.assert_close(prior.log_prob(x), log_normal(e) - fwd)
    assert prior.sample(7).shape == (7, D)


def test_iaf_log_q_is_change_of_variables_and_inverse_agrees():
    torch.manual_seed(0)
    post = IAFPosterior(in_features=6, latent_dim=D, steps=3, context_features=4, hidden_units=32).double()
    h = torch.randn(3, 6, dtype=torch.float64)
    q = post(h)
    require_event_shape(q, 3, (D,))
    eps = torch.randn(2, 3, D, dtype=torch.float64)
    z, log_q = q.transform(eps)
    for k in range(2):
        for b in range(3):  # row b of the batch: its own loc, scale and context

            def row(e, k=k, b=b):
                return q.transform(torch.cat([eps[k, :b], e[None], eps[k, b + 1 :]]))[0][b]

            brute = torch.linalg.slogdet(jacobian(row, eps[k, b]))[1]
            torch.testing.assert_close(log_q[k, b], log_normal(eps[k, b]) - brute)
    # log_prob of any z (slow sequential inverse) agrees with the one-pass value
    torch.testing.assert_close(q.log_prob(z.clone()), log_q)
    zs, lq = q.rsample_and_log_prob((4,))
    assert zs.shape == (4, 3, D) and q.log_prob(zs) is lq
    torch.testing.assert_close(q.log_prob(zs.detach().clone()), lq)
    assert q.rsample().shape == (3, D)
    q.rsample().sum().backward()
    assert post.head.weight.grad.abs().sum() > 0


def diverge(module: nn.Module, std: float) -> None:
    """Add N(0, std^2) noise to every weight and bias, as a diverging run would (the masks stay: MADE applies them)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn_like(p))


def test_soft_clamp_is_the_identity_near_zero_and_bounded():
    a = torch.tensor([-1e35, -1e3, -1.0, -1e-3, 0.0, 1e-3, 1.0, 1e3, 1e35])
    clamped = soft_clamp_log_scale(a)
    expected = torch.tensor([-1.0, -1.0, math.tanh(-0.2), -2e-4, 0.0, 2e-4, math.tanh(0.2), 1.0, 1.0]) * LOG_SCALE_BOUND
    torch.testing.assert_close(clamped, expected)


def test_flow_densities_stay_finite_and_scales_bounded_with_diverged_weights():
    """Weights perturbed by N(0, 3^2): the MADEs' scale pre-activations reach ~1e3, and unclamped the scales compound
    over the steps until eps^2 or exp(-log sigma) overflows (log p = -inf, the IAF's inverse NaN). Every step's
    log sigma stays within the bound (the IAF's in [-B, 0]), and the AF prior's log p(z) and the IAF posterior's
    log q (one pass, and the sequential inverse) stay finite."""
    torch.manual_seed(0)
    prior = AutoregressiveFlowPrior(D, steps=3, hidden_layers=2, hidden_units=32, mean_only=False)
    post = IAFPosterior(in_features=6, latent_dim=D, steps=2, context_features=4, hidden_units=32)
    diverge(prior, 3.0)
    diverge(post.steps, 3.0)
    z = torch.randn(16, D)
    raw = made_outputs(prior.steps[-1], z)[..., 1]
    assert raw.abs().max() > 100
    for step in prior.steps:
        log_sigma = step().meta(z).base.inv.log_scale
        assert log_sigma.abs().max() <= LOG_SCALE_BOUND
    assert torch.isfinite(prior.log_prob(z)).all()
    q = post(torch.randn(16, 6))
    zq, log_q = q.rsample_and_log_prob()
    assert torch.isfinite(log_q).all()
    assert torch.isfinite(q.log_prob(zq.detach().clone())).all()
    for step in q.steps:
        log_sigma = step.meta(zq).base.log_scale
        assert (log_sigma <= 0).all() and (log_sigma >= -LOG_SCALE_BOUND).all()


def test_flow_prior_log_det_is_the_jacobian_where_the_clamp_bites():
    """Perturbed weights in float64 (log-scale pre-activations of ~5-50, in the saturating part of the clamp): the
    log-det is still that of the flow's explicit Jacobian."""
    torch.manual_seed(1)
    prior = AutoregressiveFlowPrior(D, steps=2, hidden_layers=2, hidden_units=16, mean_only=False).double()
    diverge(prior, 1.0)
    z = 0.3 * torch.randn(4, D, dtype=torch.float64)
    pre = made_outputs(prior.steps[0], z)[..., 1]
    assert pre.abs().max() > LOG_SCALE_BOUND
    log_det = prior.inverse(z)[1]
    brute = log_abs_det(lambda z_: prior.inverse(z_[None])[0][0], z)
    torch.testing.assert_close(log_det, brute)


def test_configs_build_the_parts():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    prior = instantiate(OmegaConf.load("conf/prior/af.yaml"))(latent_dim=D)
    assert isinstance(prior, AutoregressiveFlowPrior) and prior.mean_only and len(prior.steps) == 4
    post = instantiate(OmegaConf.load("conf/posterior/iaf.yaml"))(in_features=6, latent_dim=D)
    assert isinstance(post, IAFPosterior) and len(post.steps) == 2
