"""Every encoder x decoder x likelihood option builds for every data shape and takes a training step."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from vae_experiments.model import build_model
from vae_experiments.objectives.elbo import ELBO
from vae_experiments.train import CONFIG_DIR

CONF = Path(CONFIG_DIR)
SMALL_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
LARGE_SHAPES = [(3, 64, 64), (3, 218, 178)]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def part(group: str, name: str, **overrides: object):
    node = OmegaConf.load(CONF / group / f"{name}.yaml")
    for key, value in overrides.items():
        OmegaConf.update(node, key, value)
    return hydra.utils.instantiate(node)


CORE_NETS = ["mlp", "conv", "resnet"]
AUTOREGRESSIVE = {"pixelcnn"}


def variant_nets() -> list[str]:
    """The variants' own networks (IntroVAE, SOS-VAE, rho-VAE CNN, ...): present as both encoder and decoder."""
    both = set(options("encoder")) & set(options("decoder"))
    return sorted(both - set(CORE_NETS) - AUTOREGRESSIVE)


def data_for(likelihood, shape: tuple[int, ...], batch: int = 2) -> torch.Tensor:
    levels = getattr(likelihood, "levels", None)
    x = torch.rand(batch, *shape)
    if levels is not None:
        x = torch.round(x * (levels - 1)) / (levels - 1)
    return x


def step(encoder: str, decoder: str, likelihood: str, shape: tuple[int, ...]) -> None:
    factories = {
        "encoder": part("encoder", encoder),
        "posterior": part("posterior", "diagonal"),
        "prior": part("prior", "standard_normal"),
        "decoder": part("decoder", decoder),
        "likelihood": part("likelihood", likelihood),
    }
    model = build_model(factories, data_shape=shape, latent_dim=4)
    x = data_for(model.likelihood, shape)
    loss, _ = ELBO().loss(model, x)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert model.sample(2).shape == (2, *shape)


@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("decoder", CORE_NETS)
@pytest.mark.parametrize("encoder", CORE_NETS)
def test_every_encoder_decoder_pair_steps(encoder: str, decoder: str, shape) -> None:
    step(encoder, decoder, "gaussian", shape)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("decoder", CORE_NETS)
@pytest.mark.parametrize("likelihood", options("likelihood"))
def test_every_likelihood_with_every_decoder(likelihood: str, decoder: str, shape) -> None:
    step("mlp", decoder, likelihood, shape)


@pytest.mark.parametrize("shape", [*SMALL_SHAPES, *LARGE_SHAPES], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("net", variant_nets())
def test_variant_networks_step_on_every_shape(net: str, shape) -> None:
    step(net, net, "gaussian", shape)


@pytest.mark.parametrize("shape", LARGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("net", ["conv", "resnet", "mlp"])
def test_each_network_steps_on_large_shapes(net: str, shape) -> None:
    step(net, net, "gaussian", shape)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 218, 178), (3, 7, 5)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("net", ["conv", "resnet"])
def test_decoders_retrace_odd_sizes_exactly(net: str, shape) -> None:
    decoder = part("decoder", net)(latent_dim=3, out_shape=(5, *shape[1:]), data_shape=shape)
    assert decoder(torch.randn(2, 3)).shape == (2, 5, *shape[1:])


def test_vector_data_with_mlp() -> None:
    step("mlp", "mlp", "gaussian", (2,))
