"""bf16 autocast (``trainer=cpu_bf16``, ``trainer=gpu``): the importance-sampled NLL stays within 0.2% of the exact
marginal (bf16 rounds the decoder's outputs, so it is not exact: fp32 is 5x closer), flow densities are computed in
fp32 from the bf16 network outputs, and a convolutional run trains under Lightning's bf16-mixed."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import MultivariateNormal

from tests.test_math_core import _linear_gaussian_vae
from vae_experiments.distributions.flow_prior import AutoregressiveFlowPrior
from vae_experiments.distributions.flow_scale import soft_clamp_log_scale
from vae_experiments.distributions.iaf import IAFPosterior
from vae_experiments.metrics.nll import importance_sampled_log_likelihood
from vae_experiments.train import train


def test_nll_under_cpu_bf16_autocast_matches_the_exact_marginal() -> None:
    model, w, b = _linear_gaussian_vae(d=3, D=16, dtype=torch.float32)
    x = (torch.randn(32, 16, dtype=torch.float64) * 2).float()
    exact = MultivariateNormal(b, w @ w.T + 0.25 * torch.eye(16, dtype=torch.float64)).log_prob(x.double())
    dtypes: list[torch.dtype] = []
    model.decoder.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        estimate = importance_sampled_log_likelihood(model, x, k=2000, max_rows=32 * 500)
    assert set(dtypes) == {torch.bfloat16}  # the decoder really ran in bf16
    assert estimate.dtype == torch.float32  # the likelihood and the log-sum-exp did not
    error = estimate.double() - exact  # log p(x) is about -133 nats here
    assert (error.abs() / exact.abs()).max() < 2e-3 and error.abs().mean() < 0.1, error
    # bf16 rounding is visible: the same estimate in fp32 is closer still
    torch.manual_seed(0)
    fp32 = importance_sampled_log_likelihood(model, x, k=2000, max_rows=32 * 500).double()
    assert (fp32 - exact).abs().mean() < error.abs().mean()


def test_a_convolutional_run_trains_under_cpu_bf16(make_cfg) -> None:
    metrics = train(make_cfg("trainer=cpu_bf16", "encoder=conv", "decoder=conv", "test=false"))
    assert math.isfinite(metrics["val/elbo"])


def _outputs_of(modules: list[torch.nn.Module]) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    for module in modules:
        module.register_forward_hook(lambda m, args, out: seen.append(out.detach()))
    return seen


def test_iaf_log_density_under_bf16_autocast_is_computed_in_fp32() -> None:
    """The networks may run in bf16, the density may not: log q from ``rsample_and_log_prob`` equals the IAF formula
    evaluated in float64 on the very network outputs (bf16) the step produced."""
    torch.manual_seed(0)
    posterior = IAFPosterior(16, 32, steps=2, context_features=8, hidden_units=64)
    head_out, made_out = _outputs_of([posterior.head]), _outputs_of([step.hyper for step in posterior.steps])
    h = torch.randn(64, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = posterior(h)
        eps = torch.randn(64, 32)
        _, log_q = q.transform(eps)
    assert head_out[0].dtype == made_out[0].dtype == torch.bfloat16 and log_q.dtype == torch.float32
    out = head_out[0].double()
    loc, scale, e = out[:, :32], torch.exp(0.5 * out[:, 32:64]), eps.double()
    z = loc + scale * e
    expected = -(scale.log() + 0.5 * e.pow(2) + 0.5 * math.log(2 * math.pi)).sum(-1)
    for made in made_out:
        made = made.unflatten(-1, (32, 2))
        m = made[..., 0].double()
        log_sigma = soft_clamp_log_scale(F.logsigmoid(made[..., 1].double() + posterior.gate_bias))
        z = log_sigma.exp() * z + (1 - log_sigma.exp()) * m
        expected = expected - log_sigma.sum(-1)
    torch.testing.assert_close(log_q.double(), expected, rtol=1e-6, atol=1e-4)


def test_af_prior_log_density_under_bf16_autocast_is_computed_in_fp32() -> None:
    torch.manual_seed(0)
    prior = AutoregressiveFlowPrior(32, steps=2, hidden_units=64, mean_only=False)
    made_out = _outputs_of([step.hyper for step in prior.steps])
    z = torch.randn(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_p = prior.log_prob(z)
    assert made_out[0].dtype == torch.bfloat16 and log_p.dtype == torch.float32
    eps, log_det = z.double(), torch.zeros(64, dtype=torch.float64)
    for made in made_out:  # the hooks saw the steps in the order inverse() runs them
        made = made.unflatten(-1, (32, 2))
        mu, log_sigma = made[..., 0].double(), soft_clamp_log_scale(made[..., 1].double())
        eps = (eps - mu) * torch.exp(-log_sigma)
        log_det = log_det - log_sigma.sum(-1)
    expected = -0.5 * (eps.pow(2).sum(-1) + 32 * math.log(2 * math.pi)) + log_det
    torch.testing.assert_close(log_p.double(), expected, rtol=1e-6, atol=1e-4)
