"""bf16 autocast on the CPU (``trainer=cpu_bf16``): the importance-sampled NLL stays within 0.2% of the exact
marginal (bf16 rounds the decoder's outputs, so it is not exact: fp32 is 5x closer), and a convolutional run trains
under Lightning's bf16-mixed."""

from __future__ import annotations

import math

import torch
from torch.distributions import MultivariateNormal

from tests.test_math_core import _linear_gaussian_vae
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
