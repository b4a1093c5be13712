"""Residual encoder and decoder for any image size (pre-activation blocks, GroupNorm or BatchNorm)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from vae_experiments.nets.common import activation, downsampled_sizes, stages_for


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels // 4) or 1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose batch, group or none")


class ResBlock(nn.Module):
    """``y = x + conv(act(norm(conv(act(norm(x))))))``, with a 1x1 projection when the width changes."""

    def __init__(self, c_in: int, c_out: int, norm: str, act: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(norm, c_in),
            activation(act),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            _norm(norm, c_out),
            activation(act),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class ResNetEncoder(nn.Module):
    """Stem conv, then per stage: stride-2 conv and ``blocks`` residual blocks; flatten; Linear."""

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int] = (32, 64, 128),
        blocks: int = 1,
        out_features: int = 256,
        norm: str = "group",
        act: str = "silu",
    ) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"encoder=resnet needs images (C, H, W), the data are {tuple(in_shape)}: use encoder=mlp")
        c, h, w = in_shape
        stages = stages_for((h, w), len(channels))
        widths = list(channels[:stages]) or [channels[0]]
        layers: list[nn.Module] = [nn.Conv2d(c, widths[0], 3, padding=1)]
        c = widths[0]
        for c_out in widths[:stages]:
            layers.append(nn.Conv2d(c, c_out, 3, stride=2, padding=1))
            layers += [ResBlock(c_out, c_out, norm, act) for _ in range(blocks)]
            c = c_out
        layers += [_norm(norm, c), activation(act)]
        self.body = nn.Sequential(*layers)
        fh, fw = downsampled_sizes((h, w), stages)[-1]
        self.head = nn.Sequential(nn.Linear(c * fh * fw, out_features), activation(act))
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).flatten(1))


class ResNetDecoder(nn.Module):
    """Linear to the smallest map; per stage: ``blocks`` residual blocks, nearest upsampling to the exact size, conv."""

    autoregressive = False

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        data_shape: Sequence[int] | None = None,
        channels: Sequence[int] = (128, 64, 32),
        blocks: int = 1,
        norm: str = "group",
        act: str = "silu",
    ) -> None:
        super().__init__()
        if len(out_shape) != 3:
            raise ValueError(f"decoder=resnet needs images (C, H, W), the data are {tuple(out_shape)}: use decoder=mlp")
        p, h, w = out_shape
        stages = stages_for((h, w), len(channels))
        widths = list(channels[len(channels) - stages :]) or [channels[-1]]
        self.sizes = downsampled_sizes((h, w), stages)[::-1]
        self.c0 = widths[0]
        self.fc = nn.Linear(latent_dim, self.c0 * math.prod(self.sizes[0]))
        self.stages = nn.ModuleList()
        c = self.c0
        for c_out in [*widths[1:], widths[-1]][:stages]:
            self.stages.append(
                nn.ModuleDict(
                    {
                        "blocks": nn.Sequential(*[ResBlock(c, c, norm, act) for _ in range(blocks)]),
                        "conv": nn.Conv2d(c, c_out, 3, padding=1),
                    }
                )
            )
            c = c_out
        self.out = nn.Sequential(
            ResBlock(c, c, norm, act), _norm(norm, c), activation(act), nn.Conv2d(c, p, 3, padding=1)
        )

    def forward(self, z: Tensor) -> Tensor:
        y = self.fc(z).view(-1, self.c0, *self.sizes[0])
        for stage, size in zip(self.stages, self.sizes[1:], strict=True):
            y = stage["conv"](F.interpolate(stage["blocks"](y), size=size, mode="nearest"))
        return self.out(y)
