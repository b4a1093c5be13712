"""The IntroVAE residual encoder and decoder, as Soft-IntroVAE uses them for 28x28 and 32x32 images.

Residual block: conv3x3 -> BN -> LeakyReLU(0.2) -> conv3x3 -> BN, plus the shortcut (a bias-free 1x1 conv when the
width changes), then LeakyReLU(0.2); no conv has a bias. Encoder: conv5x5 (C -> ch[0]) -> BN -> LeakyReLU -> AvgPool2,
then per further width a block and AvgPool2, then one more block; the features are flattened (the posterior's linear
head maps them to the 2*z_dim outputs). Decoder: Linear(z, ch[-1]*h*w) -> ReLU, then per width in reverse a block and
a nearest upsampling, one more block, and a conv5x5 to the likelihood's channels with no output activation.
CIFAR-10 / SVHN use channels (64, 128, 256) (4x4x256 features), MNIST / Fashion-MNIST (64, 128) (7x7x128).

Upsampling goes to the encoder's exact sizes (floor halving), so sizes that are not multiples of 2^len(channels)
round-trip too. ``channels_last`` stores the activations NHWC, which the CPU convolution kernels run faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _sizes(size: tuple[int, int], stages: int) -> list[tuple[int, int]]:
    sizes = [size]
    for _ in range(stages):
        h, w = sizes[-1]
        sizes.append((h // 2, w // 2))
    return sizes


def _check_image(shape: Sequence[int], channels: Sequence[int], part: str) -> list[tuple[int, int]]:
    if len(shape) != 3:
        raise ValueError(f"{part}=intro needs images (C, H, W), the data are {tuple(shape)}: use {part}=mlp")
    if not channels:
        raise ValueError(f"{part}.channels needs at least one width")
    sizes = _sizes((shape[1], shape[2]), len(channels))
    if min(sizes[-1]) < 1:
        raise ValueError(
            f"{part}.channels has {len(channels)} widths, which halve {tuple(shape[1:])} below 1 pixel; use fewer"
        )
    return sizes


class IntroResBlock(nn.Module):
    """``LeakyReLU(shortcut(x) + BN(conv(LeakyReLU(BN(conv(x))))))``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.skip(x) + self.body(x))


class IntroEncoder(nn.Module):
    """``x (B, C, H, W) -> h (B, ch[-1] * H/2^n * W/2^n)``, n = len(channels)."""

    def __init__(
        self, in_shape: Sequence[int], channels: Sequence[int] = (64, 128, 256), channels_last: bool = True
    ) -> None:
        super().__init__()
        sizes = _check_image(in_shape, channels, "encoder")
        layers: list[nn.Module] = [
            nn.Conv2d(in_shape[0], channels[0], 5, padding=2, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.LeakyReLU(0.2),
            nn.AvgPool2d(2),
        ]
        for c_in, c_out in pairwise(channels):
            layers += [IntroResBlock(c_in, c_out), nn.AvgPool2d(2)]
        layers.append(IntroResBlock(channels[-1], channels[-1]))
        self.body = nn.Sequential(*layers)
        self.out_features = channels[-1] * sizes[-1][0] * sizes[-1][1]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def forward(self, x: Tensor) -> Tensor:
        # back to NCHW before flattening, so the feature order does not depend on the memory format
        return self.body(x.contiguous(memory_format=self.memory_format)).contiguous().flatten(1)


class IntroDecoder(nn.Module):
    """``z (B, d) -> params (B, P, H, W)``, P = the likelihood's channels; linear output."""

    autoregressive = False

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        data_shape: Sequence[int] | None = None,
        channels: Sequence[int] = (64, 128, 256),
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        sizes = _check_image(out_shape, channels, "decoder")
        self.sizes = sizes[::-1]  # smallest first
        self.c0 = channels[-1]
        self.fc = nn.Sequential(nn.Linear(latent_dim, self.c0 * self.sizes[0][0] * self.sizes[0][1]), nn.ReLU())
        widths = list(channels[::-1])
        self.blocks = nn.ModuleList(IntroResBlock(c_in, c_out) for c_in, c_out in pairwise([self.c0, *widths]))
        self.out = nn.Sequential(
            IntroResBlock(channels[0], channels[0]), nn.Conv2d(channels[0], out_shape[0], 5, padding=2)
        )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def forward(self, z: Tensor) -> Tensor:
        y = self.fc(z).view(-1, self.c0, *self.sizes[0]).contiguous(memory_format=self.memory_format)
        for block, size in zip(self.blocks, self.sizes[1:], strict=True):
            y = F.interpolate(block(y), size=size, mode="nearest")
        return self.out(y).contiguous()
