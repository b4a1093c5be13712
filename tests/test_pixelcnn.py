"""PixelCNN decoder: exact receptive field and causality by gradient, tied weights, and sampling from the
model's own distribution on images small enough to enumerate."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import chi2
from torch import Tensor, nn

from vae_experiments.distributions.likelihoods import BernoulliLikelihood
from vae_experiments.nets.pixelcnn import GREY, PixelCNNDecoder

LATENT = 3


class TinyBase(nn.Module):
    """A stand-in base decoder z -> (cond_channels, H, W): Linear + reshape."""

    def __init__(self, latent_dim: int, out_shape: tuple[int, int, int], data_shape: tuple[int, int, int]):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.fc = nn.Linear(latent_dim, math.prod(out_shape))

    def forward(self, z: Tensor) -> Tensor:
        return self.fc(z).view(-1, *self.out_shape)


def make(shape: tuple[int, int, int], conditional: bool = True, **cfg) -> PixelCNNDecoder:
    cfg.setdefault("hidden_channels", 6)
    base = TinyBase if conditional else None
    return PixelCNNDecoder(LATENT, shape, shape, base=base, conditional=conditional, **cfg)


def jacobian(dec: PixelCNNDecoder, shape: tuple[int, int, int]) -> Tensor:
    """d params[p, i, j] / d x[c, k, l] for one random image and z: shape (P, H, W, C, H, W)."""
    dec = dec.double()
    z = torch.randn(1, LATENT, dtype=torch.float64)
    x = torch.rand(1, *shape, dtype=torch.float64)
    return torch.autograd.functional.jacobian(lambda x_: dec(z, x_[None])[0], x[0])


def expected(shape, width: int, height: int, colour: int | None, i: int, j: int) -> Tensor:
    """Inputs (C, H, W) that output pixel (i, j) of colour ``colour`` must see: the width x height rectangle
    above, (width - 1) / 2 pixels to the left, and the centre's colours < ``colour`` (None: none of them)."""
    c, h, w = shape
    half = (width - 1) // 2
    field = torch.zeros(c, h, w, dtype=torch.bool)
    field[:, max(0, i - height) : i, max(0, j - half) : j + half + 1] = True
    field[:, i, max(0, j - half) : j] = True
    if colour is not None:
        field[:colour, i, j] = True
    return field


FIELDS = [  # (n_layers, kernel_size, kernel_height) -> "A x B"
    (1, 3, 1, "3x1"),
    (2, 3, 1, "5x2"),
    (1, 5, 2, "5x2"),
    (2, 3, 2, "5x4"),
    (3, 3, 1, "7x3"),
]


@pytest.mark.parametrize(("n_layers", "kernel_size", "kernel_height", "field"), FIELDS)
@pytest.mark.parametrize("block", ["residual", "gated"])
def test_grey_field_is_exactly_the_advertised_rectangle(n_layers, kernel_size, kernel_height, field, block):
    shape = (1, 6, 8)
    dec = make(shape, n_layers=n_layers, kernel_size=kernel_size, kernel_height=kernel_height, block=block)
    assert dec.receptive_field == field
    width, height = map(int, field.split("x"))
    jac = jacobian(dec, shape)
    for i, j in itertools.product(range(6), range(8)):
        seen = jac[0, i, j] != 0
        assert torch.equal(seen, expected(shape, width, height, None, i, j)), (i, j)


@pytest.mark.parametrize("channel_masks", [True, False])
@pytest.mark.parametrize("grayscale", [False, True])
def test_rgb_field_channel_order_and_grey_context(channel_masks, grayscale):
    shape = (3, 5, 5)
    dec = make(shape, n_layers=2, res1x1_blocks=1, res1x1_every=1, channel_masks=channel_masks, grayscale=grayscale)
    jac = jacobian(dec, shape)
    grey = torch.tensor(GREY, dtype=torch.float64)
    for p, i, j in itertools.product(range(3), range(5), range(5)):
        g = jac[p, i, j]
        want = expected(shape, 5, 2, p if channel_masks else None, i, j)
        assert torch.equal(g != 0, want), (p, i, j)
        if grayscale:  # context enters only as 0.299R + 0.587G + 0.114B: gradients proportional to the weights
            ctx = want.clone()
            ctx[:, i, j] = False
            per_weight = g[:, ctx[0]] / grey[:, None]
            torch.testing.assert_close(per_weight, per_weight[:1].expand_as(per_weight))


def test_tied_layers_share_one_parameter():
    shape = (1, 6, 6)
    tied, untied = make(shape, tied=True), make(shape, tied=False)
    layers = tied.layers
    assert all(layer.conv_v.weight is layers[0].conv_v.weight for layer in layers)
    assert all(layer.conv_h.weight is layers[0].conv_h.weight for layer in layers)
    per_layer = sum(p.numel() for p in layers[0].parameters())
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == (len(layers) - 1) * per_layer > 0
    tied(torch.randn(2, LATENT), torch.rand(2, *shape)).sum().backward()
    grads = [p for p in tied.parameters() if p is layers[0].conv_v.weight]
    assert len(grads) == 1 and grads[0].grad.abs().sum() > 0


def enumerate_images(shape: tuple[int, int, int]) -> Tensor:
    n = math.prod(shape)
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))
    return bits.view(-1, *shape)


@pytest.mark.parametrize(
    ("shape", "conditional", "channel_masks"),
    [((1, 3, 2), False, None), ((3, 1, 2), True, True), ((3, 1, 2), True, False)],
)
def test_samples_follow_the_models_own_distribution(shape, conditional, channel_masks):
    torch.manual_seed(0)
    lik = BernoulliLikelihood()
    dec = make(shape, conditional=conditional, n_layers=1, channel_masks=channel_masks, hidden_channels=8)
    with torch.no_grad():
        for p in dec.parameters():
            p.mul_(3.0)  # sharper conditionals than the default init, so errors in the order would show
        images = enumerate_images(shape)
        z = torch.randn(1, LATENT)
        probs = lik(dec(z.expand(len(images), -1), images)).log_prob(images).exp()
        assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
        n = 20000
        draws = dec.sample(z.expand(n, -1), lik)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    index = (draws.flatten(1) * 2 ** torch.arange(math.prod(shape) - 1, -1, -1)).sum(1).long()
    counts = torch.bincount(index, minlength=len(images)).double()
    expected_counts = n * probs.double()
    keep = expected_counts > 5  # chi-square over the cells with enough mass, the rest pooled
    stat = ((counts[keep] - expected_counts[keep]) ** 2 / expected_counts[keep]).sum()
    rest_obs, rest_exp = counts[~keep].sum(), expected_counts[~keep].sum()
    if rest_exp > 5:
        stat = stat + (rest_obs - rest_exp) ** 2 / rest_exp
    dof = int(keep.sum()) - (0 if rest_exp > 5 else 1)
    assert stat < chi2.ppf(1 - 1e-4, dof), (stat, dof)
    assert (counts / n - probs.double()).abs().max() < 0.015
    assert probs.max() > 2 * probs.min()  # a non-trivial distribution was tested


def test_config_defaults_are_the_binary_vlae_setup():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load("conf/decoder/pixelcnn.yaml")
    assert cfg.base._target_ == "vae_experiments.nets.conv.ConvDecoder"
    cfg.base = None
    cfg.conditional = False
    dec = instantiate(cfg)(latent_dim=LATENT, out_shape=(1, 6, 6), data_shape=(1, 6, 6))
    assert dec.autoregressive and dec.receptive_field == "13x6"
    assert sum(len(block) for block in dec.res1x1) == 4 and all(layer is dec.layers[0] for layer in dec.layers)
