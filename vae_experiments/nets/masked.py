"""A convolution whose kernel is multiplied by a fixed 0/1 mask and whose input is padded asymmetrically.

The asymmetric (possibly negative, i.e. cropping) padding places the kernel so that output pixel (i, j) reads
rows [i - top, i - top + kh - 1] and columns [j - left, j - left + kw - 1]; the mask removes single taps and
single input -> output channel pairs (the channel-ordered centre taps of PixelCNN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedConv2d(nn.Conv2d):
    """``y = conv2d(pad(x, (left, right, top, bottom)), W * mask) + b``; ``mask`` is (out, in, kh, kw)."""

    def __init__(self, mask: Tensor, pad: tuple[int, int, int, int], bias: bool = True) -> None:
        out_channels, in_channels, kh, kw = mask.shape
        super().__init__(in_channels, out_channels, (kh, kw), bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.pad), self.weight * self.mask, self.bias)


def channel_mask(in_groups: Tensor, out_groups: Tensor, strict: bool) -> Tensor:
    """(out, in) 0/1 matrix: an input channel of colour group a may feed output group b iff a < b (mask A,
    ``strict``) or a <= b (mask B). Group -1 (the z features) feeds every output."""
    allowed = in_groups[None, :] < out_groups[:, None] if strict else in_groups[None, :] <= out_groups[:, None]
    return (allowed | (in_groups[None, :] < 0)).float()


def groups(n: int, n_groups: int) -> Tensor:
    """Colour group of each of ``n`` hidden channels: contiguous blocks, ``f * G // n``."""
    return torch.arange(n) * n_groups // n
