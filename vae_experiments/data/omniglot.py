"""Omniglot from torchvision's original PNGs, resized to 28x28 and inverted, held in memory."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torchvision import datasets
from torchvision.transforms import v2

from vae_experiments.data.datamodule import Splits
from vae_experiments.data.grey import GreyImages
from vae_experiments.data.on_disk import OnDisk

SIZE = 28
CACHE = f"omniglot{SIZE}.pt"


@dataclass(kw_only=True)
class Omniglot(GreyImages, OnDisk):
    """Omniglot's background and evaluation sets pooled (32,460 images of 50 alphabets), resized 105x105 -> 28x28
    with antialiasing and inverted so strokes are 1 and background 0 (``levels`` 256, 2 binarised), from
    ``root/omniglot-py``. One permutation drawn with ``seed`` holds out ``test_size`` test images (8,070, the size
    of Burda et al.'s test set), then ``val_size`` validation images; the rest train.

    Not Burda et al.'s ``chardata.mat`` (24,345 train / 8,070 test, used by IWAE/VLAE): the numbers are comparable
    in kind but not identical to published Omniglot results. The resized tensor is cached in
    ``root/omniglot-py/omniglot28.pt`` (skipped if the folder is read-only); with the cache the PNGs are not
    needed. Binarisation and ``train_subset``: see ``memory.split_images``; ``hflip`` mirrors training images.
    """

    name = "omniglot"
    title = "Omniglot"
    folder = "omniglot-py"
    required = ("images_background", "images_evaluation", "images_background.zip", "images_evaluation.zip")
    what = "images_background.zip and images_evaluation.zip and their extracted folders"
    values = 256

    val_size: int = 1_345
    test_size: int = 8_070

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (1, SIZE, SIZE)

    @property
    def cache(self) -> Path:
        return self.path / CACHE

    def present(self) -> bool:
        return super().present() or self.cache.is_file()

    def fetch(self) -> None:
        for background in (True, False):
            datasets.Omniglot(self.root, background=background, download=True)

    def _resized(self, background: bool) -> Tensor:
        resize = v2.Compose([v2.PILToTensor(), v2.Resize((SIZE, SIZE), antialias=True)])
        ds = self.open(lambda: datasets.Omniglot(self.root, background=background, transform=resize))
        # torchvision lists folders in os.listdir order; sort by path so the pool (and so the split) is the same
        # on every file system. This reads two private attributes of torchvision's Omniglot.
        order = sorted(
            range(len(ds)),
            key=lambda i: (ds._characters[ds._flat_character_images[i][1]], ds._flat_character_images[i][0]),
        )
        return torch.stack([ds[i][0] for i in order])

    def images(self) -> Tensor:
        """The pooled, resized, inverted uint8 images (N, 1, 28, 28), from the cache when it is there."""
        if self.cache.is_file():
            return torch.load(self.cache, weights_only=True)
        images = 255 - torch.cat([self._resized(background) for background in (True, False)])
        with contextlib.suppress(OSError):
            torch.save(images, self.cache)
        return images

    def splits(self) -> Splits:
        return self.split(self.images(), None, self.val_size, self.test_size)
