"""CelebA read per item by torchvision's ``CelebA`` (202,599 RGB 218x178 images do not fit in memory)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset, random_split
from torchvision import datasets
from torchvision.transforms import v2

from vae_experiments.data.datamodule import Splits
from vae_experiments.data.on_disk import OnDisk
from vae_experiments.errors import ConfigError

SOS_VAE_SEED = 42
SOS_VAE_FRACTIONS = (0.7, 0.2, 0.1)
LISTS = (
    "list_eval_partition.txt",
    "identity_CelebA.txt",
    "list_attr_celeba.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
)


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


@dataclass(kw_only=True)
class CelebA(OnDisk):
    """CelebA's 202,599 aligned RGB 218x178 faces (``levels`` 256) from ``root/celeba`` (``img_align_celeba/`` and
    the five list files), read per item (use workers: ``num_workers``, ``pin_memory``).

    ``image_size=None`` keeps the full 218x178 frame (SOS-VAE); otherwise the shorter side is resized to
    ``image_size`` and the centre ``image_size`` square is cropped. ``subset=None`` uses the official partition
    (162,770 / 19,867 / 19,962); ``subset=n`` reproduces SOS-VAE's recipe: ``random_split`` of all images into ``n``
    and the rest with ``torch.Generator().manual_seed(42)``, then ``random_split`` of the ``n`` into 70/20/10 with a
    fresh generator seeded 42 (7,000 / 2,000 / 1,000 for n = 10,000). ``hflip`` mirrors training images at random.
    RGB: no binarisation.
    """

    name = "celeba"
    title = "CelebA"
    folder = "celeba"
    required = ("img_align_celeba", *LISTS)
    what = "img_align_celeba/ and " + ", ".join(LISTS)

    image_size: int | None = None
    subset: int | None = None
    hflip: bool = False

    @property
    def data_shape(self) -> tuple[int, ...]:
        """(3, 218, 178) full frame, or (3, s, s) with ``image_size = s``."""
        return (3, 218, 178) if self.image_size is None else (3, self.image_size, self.image_size)

    @property
    def levels(self) -> int:
        return 256

    def fetch(self) -> None:
        """Needs ``gdown`` besides a network."""
        datasets.CelebA(self.root, split="all", target_type=[], download=True)

    def splits(self) -> Splits:
        """Train / validation / test float32 (3, H, W) in [0, 1], by the partition or the subset recipe above."""
        steps: list = [v2.PILToTensor()]
        if self.image_size is not None:
            steps += [v2.Resize(self.image_size, antialias=True), v2.CenterCrop(self.image_size)]
        steps.append(v2.ToDtype(torch.float32, scale=True))
        celeba = self.open(lambda: datasets.CelebA(self.root, split="all", target_type=[], transform=v2.Compose(steps)))
        subset = self.subset
        if subset is not None and not 0 < subset <= len(celeba):
            raise ConfigError(f"dataset.subset={subset} but CelebA has {len(celeba)} images: choose 1..{len(celeba)}")
        if subset is None:
            partition = (self.path / "list_eval_partition.txt").read_text().split()[1::2]
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
        return CelebAImages(celeba, train, self.hflip), CelebAImages(celeba, val), CelebAImages(celeba, test)
