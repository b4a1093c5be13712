"""The 2-D toy distributions of Soft-IntroVAE's 2-D experiments, sampled with an explicit generator.

Recipes (``U`` uniform on [0, 1), ``N`` standard normal, all draws independent; ``scale`` multiplies the
result, 1 reproduces the Soft-IntroVAE geometry):

- ``8gaussians``: 8 centres on the circle of radius 2 at angles k*45 degrees, a centre chosen uniformly per
  point, plus isotropic noise of std 0.02; everything divided by 1.414, so the modes sit at radius ~1.414 with
  std ~0.014.
- ``2spirals``: ``t = sqrt(U) * 3*pi`` (540 degrees); arm 1 is ``(-t cos t + 0.5 U, t sin t + 0.5 U)``, arm 2
  its point reflection; half of the points on each arm; divided by 3, plus ``0.1 N`` noise.
- ``checkerboard``: ``x1 ~ U[-2, 2)``, ``x2 = U - 2 B + (floor(x1) mod 2)`` with ``B ~ Bernoulli(1/2)``; both
  times 2, so the points fill the 8 alternating unit-2 squares of a 4x4 board on [-4, 4]^2.
- ``rings``: 4 concentric circles of radii 3, 2.25, 1.5, 0.75 carrying equally spaced angles (a quarter of the
  points each), resampled uniformly with replacement, plus ``0.08 N`` noise per coordinate.

Every returned set is shuffled, so any slice of it is an i.i.d. sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vae_experiments.data.datamodule import Source, Splits, require_choice
from vae_experiments.data.memory import InMemoryDataset

TOYS = ("8gaussians", "2spirals", "checkerboard", "rings")


def _eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    angles = torch.arange(8) * (math.pi / 4)
    centres = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    points = centres[torch.randint(8, (n,), generator=g)] + 0.02 * torch.randn(n, 2, generator=g)
    return points / 1.414


def _two_spirals(n: int, g: torch.Generator) -> Tensor:
    half = n // 2
    t = torch.rand(n - half, generator=g).sqrt() * (3 * math.pi)
    arm = torch.stack(
        [
            -t.cos() * t + 0.5 * torch.rand(n - half, generator=g),
            t.sin() * t + 0.5 * torch.rand(n - half, generator=g),
        ],
        dim=1,
    )
    points = torch.cat([arm, -arm[:half]]) / 3
    return points + 0.1 * torch.randn(n, 2, generator=g)


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - 2 * torch.randint(2, (n,), generator=g) + x1.floor() % 2
    return 2 * torch.stack([x1, x2], dim=1)


def _rings(n: int, g: torch.Generator) -> Tensor:
    sizes = [n - 3 * (n // 4)] + [n // 4] * 3
    circles = [
        radius * torch.stack([torch.cos(a), torch.sin(a)], dim=1)
        for radius, size in zip((0.75, 1.5, 2.25, 3.0), sizes, strict=True)
        for a in [torch.linspace(0, 2 * math.pi, size + 1)[:-1]]
    ]
    points = torch.cat(circles)
    points = points[torch.randint(n, (n,), generator=g)]
    return points + 0.08 * torch.randn(n, 2, generator=g)


_SAMPLERS = {
    "8gaussians": _eight_gaussians,
    "2spirals": _two_spirals,
    "checkerboard": _checkerboard,
    "rings": _rings,
}


def sample_toy(toy: str, n: int, seed: int, scale: float = 1.0) -> Tensor:
    """``n`` float32 points of shape ``(n, 2)`` from the named toy, deterministic given ``seed``."""
    g = torch.Generator().manual_seed(seed)
    points = _SAMPLERS[toy](n, g)
    return (scale * points[torch.randperm(n, generator=g)]).to(torch.float32)


@dataclass(kw_only=True)
class Toy2D(Source):
    """One of the toys above (``toy``): ``n_train`` / ``val_size`` / ``n_test`` points (50,000 / 5,000 / 5,000 by
    default) drawn at once with ``seed`` and split in that order; ``scale`` multiplies the coordinates. Batches are
    raw float32 (B, 2) points: ``data_shape = (2,)``, ``levels = None``. No files."""

    name = "toy2d"

    toy: str = "8gaussians"
    n_train: int = 50_000
    val_size: int = 5_000
    n_test: int = 5_000
    scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        require_choice("toy", self.toy, TOYS)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (2,)

    @property
    def levels(self) -> None:
        return None

    def splits(self) -> Splits:
        points = sample_toy(self.toy, self.n_train + self.val_size + self.n_test, self.seed, self.scale)
        train, val, test = points.split([self.n_train, self.val_size, self.n_test])
        return InMemoryDataset(train.clone()), InMemoryDataset(val.clone()), InMemoryDataset(test.clone())
