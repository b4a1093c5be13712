"""The rho-VAE authors' CNN-VAE (docs/rho_vae.md#architecture), for ``experiment=rho_vae_cnn``.

Encoder: conv 1 -> 64 -> 128, kernel 4, stride 2, padding 15, each followed by ELU. The odd padding makes each
"stride-2" layer keep a 28x28 image at 28x28 ((28 + 30 - 4) // 2 + 1 = 28), so the flattened features are
128 * 28 * 28 = 100,352 wide; the posterior's heads (``posterior.head_hidden=1024``) then map them separately to
mu and to the scale parameters. Decoder: d -> 1024 (ELU) -> 128 * 7 * 7 (ELU), transposed convs 128 -> 64
(k4 s2 p1, ReLU) -> output channels (k4 s2 p1); the authors' sigmoid is the Bernoulli likelihood's logit link.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from vae_experiments.nets.common import activation


class RhoCNNEncoder(nn.Module):
    """``x (B, C, H, W) -> h (B, channels[-1] * H' * W')``: padded strided convs, each + ``act``, then flatten."""

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int] = (64, 128),
        kernel_size: int = 4,
        stride: int = 2,
        padding: int = 15,
        act: str = "elu",
    ) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"encoder=rho_cnn needs images (C, H, W), the data are {tuple(in_shape)}")
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for c_out in channels:
            layers += [nn.Conv2d(c, c_out, kernel_size, stride=stride, padding=padding), activation(act)]
            h, w = ((n + 2 * padding - kernel_size) // stride + 1 for n in (h, w))
            if min(h, w) < 1:
                raise ValueError(f"encoder=rho_cnn: the image {tuple(in_shape)} shrinks to nothing")
            c = c_out
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_features = c * h * w

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class RhoCNNDecoder(nn.Module):
    """``z (B, d) -> params (B, P, H, W)``: two linear layers to a ``channels[0] x ceil(H/2^n) x ceil(W/2^n)`` map
    (n = ``len(channels)``), then transposed convs (k4 s2 p1, each doubling the size) through ``channels[1:]`` to the
    P output channels, cropped to H x W where H or W does not divide by 2^n (28x28: exact, no crop)."""

    autoregressive = False

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        data_shape: Sequence[int] | None = None,
        hidden: int = 1024,
        channels: Sequence[int] = (128, 64),
        act: str = "elu",
        conv_act: str = "relu",
    ) -> None:
        super().__init__()
        if len(out_shape) != 3:
            raise ValueError(f"decoder=rho_cnn needs images (C, H, W), the data are {tuple(out_shape)}")
        p, h, w = out_shape
        factor = 2 ** len(channels)
        self.size = (h, w)
        self.start = (channels[0], math.ceil(h / factor), math.ceil(w / factor))
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            activation(act),
            nn.Linear(hidden, math.prod(self.start)),
            activation(act),
        )
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise(channels):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), activation(conv_act)]
        layers.append(nn.ConvTranspose2d(channels[-1], p, 4, stride=2, padding=1))
        self.convs = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.convs(self.fc(z).view(-1, *self.start))[..., : self.size[0], : self.size[1]]
