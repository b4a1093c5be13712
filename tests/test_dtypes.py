"""The model's dtype carries through every part: a model cast to float64 (``model.double()``) computes its
log-densities in float64 and agrees with the float32 model to float32 precision; reduced-precision (autocast)
network outputs are promoted to float32, float64 is never demoted (``torch.promote_types(dtype, torch.float32)``)."""

from __future__ import annotations

import copy

import pytest
import torch

from vae_experiments.train import build

DIGITS = ["dataset=digits", "latent_dim=4", "encoder.hidden=[16]", "decoder.hidden=[16]"]
GREY_8X8 = [
    "dataset=synthetic",
    "dataset.shape=[1,8,8]",
    "encoder=sos_resnet",
    "encoder.channels=[4,8]",
    "decoder=sos_resnet",
    "decoder.channels=[4,8]",
    "latent_dim=3",
]
SETUPS = {
    "default": DIGITS,
    "rho_posterior": [*DIGITS, "posterior=rho"],
    "iaf_posterior_af_prior": [
        *DIGITS,
        "posterior=iaf",
        "posterior.hidden_units=16",
        "posterior.context_features=4",
        "prior=af",
        "prior.mean_only=false",
        "prior.hidden_units=16",
    ],
    "gaussian_learned_sigma": [*DIGITS, "dataset.binarize=none", "likelihood=gaussian", "likelihood.sigma=learned"],
    "discretized_logistic": [*GREY_8X8, "likelihood=discretized_logistic", "likelihood.num_mixtures=2"],
    "low_rank_gaussian": [*GREY_8X8, "likelihood=low_rank_gaussian", "likelihood.rank=2"],
}


def log_densities(model: torch.nn.Module, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """log p(x|z), log p(z) and log q(z|x) at fixed z (k, B, d): no random draw, so both dtypes see the same z."""
    q = model.encode(x)
    return {
        "log_px_z": model.log_likelihood(z, x),
        "log_pz": model.log_prior(z),
        "log_qz": q.log_prob(z),
    }


@pytest.mark.parametrize("setup", list(SETUPS))
def test_a_float64_model_computes_in_float64_and_agrees_with_float32(make_cfg, setup: str) -> None:
    datamodule, module = build(make_cfg(*SETUPS[setup]))
    datamodule.setup("fit")
    x = next(iter(datamodule.train_dataloader()))[:4].float()
    model32 = module.model.eval()
    model64 = copy.deepcopy(model32).double()
    z = torch.randn(2, x.shape[0], model32.latent_dim, dtype=torch.float64)
    with torch.no_grad():
        ref = log_densities(model32, x, z.float())
        out = log_densities(model64, x.double(), z)
        terms = model64.terms(x.double(), k=2)
    for name, value in out.items():
        assert value.dtype == torch.float64, name
        assert ref[name].dtype == torch.float32, name
        scale = value.abs().max()
        torch.testing.assert_close(value, ref[name].double(), rtol=1e-5, atol=1e-5 * scale, msg=name)
    for name in ("log_px_z", "kl"):
        assert getattr(terms, name).dtype == torch.float64, name
    assert model64.sample(2).dtype == torch.float64
