"""Strided-convolution encoder and transposed-convolution decoder for any image size.

Each stage halves the spatial size (3x3, stride 2, padding 1: ceil halving); the decoder retraces the encoder's sizes
exactly, so 8x8, 28x28, 32x32, 64x64 and 218x178 images all build from the same config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from vae_experiments.nets.common import activation, downsampled_sizes, stages_for


class ConvEncoder(nn.Module):
    """``x (B, C, H, W) -> h (B, out_features)``: strided convs (as many stages as the size allows), then Linear."""

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int] = (32, 64, 128),
        out_features: int = 256,
        act: str = "relu",
    ) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"encoder=conv needs images (C, H, W), the data are {tuple(in_shape)}: use encoder=mlp")
        c, h, w = in_shape
        stages = stages_for((h, w), len(channels))
        layers: list[nn.Module] = []
        for c_out in channels[:stages]:
            layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), activation(act)]
            c = c_out
        self.convs = nn.Sequential(*layers)
        fh, fw = downsampled_sizes((h, w), stages)[-1]
        self.head = nn.Sequential(nn.Linear(c * fh * fw, out_features), activation(act))
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.convs(x).flatten(1))


class ConvDecoder(nn.Module):
    """``z (B, d) -> params (B, P, H, W)``: Linear to the smallest feature map, transposed convs back up, 3x3 out."""

    autoregressive = False

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        data_shape: Sequence[int] | None = None,
        channels: Sequence[int] = (128, 64, 32),
        act: str = "relu",
    ) -> None:
        super().__init__()
        if len(out_shape) != 3:
            raise ValueError(f"decoder=conv needs images (C, H, W), the data are {tuple(out_shape)}: use decoder=mlp")
        p, h, w = out_shape
        stages = stages_for((h, w), len(channels))
        channels = list(channels[len(channels) - stages :]) if stages else [channels[-1]]
        self.sizes = downsampled_sizes((h, w), stages)[::-1]  # smallest first
        self.c0 = channels[0]
        self.fc = nn.Sequential(nn.Linear(latent_dim, self.c0 * math.prod(self.sizes[0])), activation(act))
        self.ups = nn.ModuleList()
        self.acts = nn.ModuleList()
        c = self.c0
        for c_out in [*channels[1:], channels[-1]][:stages]:
            self.ups.append(nn.ConvTranspose2d(c, c_out, 3, stride=2, padding=1))
            self.acts.append(activation(act))
            c = c_out
        self.out = nn.Conv2d(c, p, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        y = self.fc(z).view(-1, self.c0, *self.sizes[0])
        for up, act, size in zip(self.ups, self.acts, self.sizes[1:], strict=True):
            y = act(up(y, output_size=size))
        return self.out(y)
