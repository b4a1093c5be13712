"""CelebA read per item by torchvision's ``CelebA`` (202,599 RGB 218x178 images do not fit in memory)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, random_split
from torchvision import datasets
from torchvision.transforms import v2

from vae_experiments.data.sources import open_torchvision
from vae_experiments.errors import ConfigError

SOS_VAE_SEED = 42
SOS_VAE_FRACTIONS = (0.7, 0.2, 0.1)


class CelebAImages(Dataset[Tensor]):
    """The images (no labels) at ``indices`` of a torchvision ``CelebA``; ``hflip`` mirrors half of them."""

    def __init__(self, celeba: datasets.CelebA, indices: list[int], hflip: bool = False) -> None:
        self.celeba = celeba
        self.indices = indices
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Tensor:
        x = self.celeba[self.indices[index]][0]
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x


def celeba_shape(image_size: int | None) -> tuple[int, int, int]:
    """(3, 218, 178) full frame, or (3, s, s) with ``image_size = s``."""
    return (3, 218, 178) if image_size is None else (3, image_size, image_size)


def celeba_splits(
    root: str | Path, image_size: int | None, subset: int | None, hflip: bool
) -> tuple[CelebAImages, CelebAImages, CelebAImages]:
    """Train / validation / test splits of ``root/celeba``, float32 (3, H, W) in [0, 1].

    ``image_size=None`` keeps the full 218x178 frame (SOS-VAE); otherwise the shorter side is resized to
    ``image_size`` and the centre ``image_size`` square is cropped. ``subset=None`` uses the official
    partition (162,770 / 19,867 / 19,962); ``subset=n`` reproduces SOS-VAE's recipe: ``random_split`` of all
    images into ``n`` and the rest with ``torch.Generator().manual_seed(42)``, then ``random_split`` of the
    ``n`` into 70/20/10 with a fresh generator seeded 42 (7,000 / 2,000 / 1,000 for n = 10,000). ``hflip``
    mirrors training images at random.
    """
    steps: list = [v2.PILToTensor()]
    if image_size is not None:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    celeba = open_torchvision(
        "celeba",
        root,
        lambda: datasets.CelebA(root, split="all", target_type=[], transform=v2.Compose(steps)),
    )
    if subset is not None and not 0 < subset <= len(celeba):
        raise ConfigError(f"dataset.subset={subset} but CelebA has {len(celeba)} images: choose 1..{len(celeba)}")
    if subset is None:
        partition = (Path(root) / "celeba" / "list_eval_partition.txt").read_text().split()[1::2]
        parts = [[i for i, p in enumerate(partition) if p == str(k)] for k in range(3)]
    else:
        chosen, _ = random_split(
            range(len(celeba)),
            [subset, len(celeba) - subset],
            generator=torch.Generator().manual_seed(SOS_VAE_SEED),
        )
        parts = [
            [chosen[i] for i in part.indices]
            for part in random_split(
                range(subset), SOS_VAE_FRACTIONS, generator=torch.Generator().manual_seed(SOS_VAE_SEED)
            )
        ]
    train, val, test = parts
    return CelebAImages(celeba, train, hflip), CelebAImages(celeba, val), CelebAImages(celeba, test)
