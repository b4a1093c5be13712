"""MADE, the autoregressive-flow prior and the IAF posterior: autoregressive structure and log-densities
against brute-force Jacobians."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from vae_experiments.contracts import check_event
from vae_experiments.distributions.flow_prior import AutoregressiveFlowPrior
from vae_experiments.distributions.iaf import IAFPosterior
from vae_experiments.nets.made import MADE

D = 5


def log_normal(eps: torch.Tensor) -> torch.Tensor:
    return -0.5 * (eps.pow(2).sum(-1) + eps.shape[-1] * math.log(2 * math.pi))


def log_abs_det(f, x: torch.Tensor) -> torch.Tensor:
    """log|det df/dx| per row of x (B, d), Jacobian by brute force."""
    return torch.stack([torch.linalg.slogdet(jacobian(f, row))[1] for row in x])


def test_made_jacobian_is_strictly_triangular_in_its_order():
    torch.manual_seed(0)
    order = torch.randperm(D)
    made = MADE(D, n_params=2, context=3, hidden_units=32, order=order, activation=nn.ELU).double()
    x, c = torch.randn(D, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    jx = jacobian(lambda x_: made(x_, c), x)  # (D, 2, D)
    jc = jacobian(lambda c_: made(x, c_), c)  # (D, 2, 3)
    allowed = order[None, :] < order[:, None]  # [i, j]: output i may see input j
    for p in range(2):
        assert torch.equal(jx[:, p] != 0, allowed)
    assert (jc != 0).all()


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
    check_event(q, 3, (D,))
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


def test_configs_build_the_parts():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    prior = instantiate(OmegaConf.load("conf/prior/af.yaml"))(latent_dim=D)
    assert isinstance(prior, AutoregressiveFlowPrior) and prior.mean_only and len(prior.mades) == 4
    post = instantiate(OmegaConf.load("conf/posterior/iaf.yaml"))(in_features=6, latent_dim=D)
    assert isinstance(post, IAFPosterior) and len(post.mades) == 2
