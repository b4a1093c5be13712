"""SOS-VAE's residual encoder and decoder (Langley et al., TMLR 2022; docs/sos_vae.md#architecture), for any image size.

Post-activation residual blocks with BatchNorm; the encoder halves the resolution (ceil) ``len(channels) - 1`` times
and max-pools to one vector; the decoder grows z back with one transposed convolution to the smallest map, then
transposed residual blocks whose output padding gives back the exact size at every stage (218x178 -> 109x89 ->
55x45 -> 28x23 and back). The decoder's last layer is a 1x1 conv (``output_layer``) whose channels follow the
likelihood's ``num_params``; the likelihood initialises it (the low-rank Gaussian's "stabilize" init).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import Tensor, nn

from vae_experiments.nets.common import downsampled_sizes


class ResidualBlock(nn.Module):
    """relu(BN(conv3x3(relu(BN(conv3x3_s(x))))) + shortcut(x)); the shortcut is a 1x1 conv when shape changes.

    ``transpose``: the first conv and the shortcut are transposed convolutions with ``output_padding`` (upsampling).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        transpose: bool = False,
        output_padding: tuple[int, int] = (0, 0),
    ) -> None:
        super().__init__()
        if transpose:
            first: nn.Module = nn.ConvTranspose2d(c_in, c_out, 3, stride, 1, output_padding, bias=False)
        else:
            first = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.body = nn.Sequential(
            first,
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        elif transpose:
            self.shortcut = nn.ConvTranspose2d(c_in, c_out, 1, stride, output_padding=output_padding)
        else:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _conv1x1_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _check_image(shape: Sequence[int], part: str, channels: Sequence[int]) -> None:
    if len(shape) != 3:
        raise ValueError(f"{part}=sos_resnet needs images (C, H, W), the data are {tuple(shape)}: use {part}=mlp")
    if not channels:
        raise ValueError(f"{part}.channels must list at least one width")


class SOSResNetEncoder(nn.Module):
    """conv3x3-BN-ReLU; ``blocks`` blocks at full resolution; per further width a stride-2 block and ``blocks - 1``
    more; conv1x1-BN-ReLU; global max-pool. The authors' CelebA net is ``channels = (64, 128, 256, 512)``,
    ``blocks = 2``; ``out_features`` = the last width (the posterior's linear heads read it)."""

    def __init__(self, in_shape: Sequence[int], channels: Sequence[int] = (64, 128, 256, 512), blocks: int = 2) -> None:
        super().__init__()
        _check_image(in_shape, "encoder", channels)
        if blocks < 1:
            raise ValueError(f"encoder.blocks must be >= 1, got {blocks}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_shape[0], channels[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        ]
        layers += [ResidualBlock(channels[0], channels[0]) for _ in range(blocks)]
        for c_in, c_out in itertools.pairwise(channels):
            layers.append(ResidualBlock(c_in, c_out, stride=2))
            layers += [ResidualBlock(c_out, c_out) for _ in range(blocks - 1)]
        layers += [_conv1x1_bn_relu(channels[-1], channels[-1]), nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.out_features = channels[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class SOSResNetDecoder(nn.Module):
    """z as a 1x1 map -> ConvTranspose2d(F, F, kernel = smallest map) -> conv1x1-BN-ReLU to the last width;
    ``blocks - 1`` blocks; per narrower width a stride-2 transposed block (exact size) and ``blocks - 1`` blocks;
    one more block at full resolution; conv1x1-BN-ReLU; ``output_layer`` (1x1 conv to the likelihood's channels).

    ``channels`` lists the widths from full resolution to the smallest map, as the encoder's do.
    """

    autoregressive = False

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        data_shape: Sequence[int] | None = None,
        channels: Sequence[int] = (64, 128, 256, 512),
        blocks: int = 2,
    ) -> None:
        super().__init__()
        _check_image(out_shape, "decoder", channels)
        if blocks < 1:
            raise ValueError(f"decoder.blocks must be >= 1, got {blocks}")
        p, h, w = out_shape
        sizes = downsampled_sizes((h, w), len(channels) - 1)  # full resolution first
        widths = list(channels)
        layers: list[nn.Module] = [
            nn.Unflatten(1, (latent_dim, 1, 1)),
            nn.ConvTranspose2d(latent_dim, latent_dim, kernel_size=sizes[-1]),
            _conv1x1_bn_relu(latent_dim, widths[-1]),
        ]
        layers += [ResidualBlock(widths[-1], widths[-1]) for _ in range(blocks - 1)]
        for i in range(len(widths) - 1, 0, -1):
            (sh, sw), (th, tw) = sizes[i], sizes[i - 1]
            padding = (th - 2 * sh + 1, tw - 2 * sw + 1)  # (s - 1) * 2 - 2 + 3 + op = target
            layers.append(ResidualBlock(widths[i], widths[i - 1], 2, transpose=True, output_padding=padding))
            layers += [ResidualBlock(widths[i - 1], widths[i - 1]) for _ in range(blocks - 1)]
        layers += [ResidualBlock(widths[0], widths[0]), _conv1x1_bn_relu(widths[0], widths[0])]
        self.body = nn.Sequential(*layers)
        self.output_layer = nn.Conv2d(widths[0], p, 1)

    def forward(self, z: Tensor) -> Tensor:
        return self.output_layer(self.body(z))
