"""Helpers shared by the shape-agnostic encoders and decoders."""

from __future__ import annotations

import math

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def downsampled_sizes(size: tuple[int, int], stages: int) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2 stage (ceil halving), starting with ``size`` itself.

    Decoders walk this list backwards and ask each transposed convolution for the exact size, so odd sizes such as
    CelebA's 218x178 (-> 109x89 -> 55x45 -> 28x23) round-trip with no cropping or padding.
    """
    sizes = [size]
    for _ in range(stages):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


def stages_for(size: tuple[int, int], requested: int, min_size: int = 2) -> int:
    """At most ``requested`` halvings, fewer when the image would shrink below ``min_size`` (8x8 digits)."""
    stages = 0
    h, w = size
    while stages < requested and min(math.ceil(h / 2), math.ceil(w / 2)) >= min_size:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        stages += 1
    return stages
