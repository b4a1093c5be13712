"""The image sources held in memory as uint8 tensors: digits, MNIST, Fashion-MNIST, CIFAR-10 and synthetic images.

Each is a dataclass of its own options only (see ``datamodule.Source``); all split with ``memory.split_images``.
Omniglot, CelebA and the 2-D toys have modules of their own.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from sklearn.datasets import load_digits
from torch import Tensor
from torchvision import datasets

from vae_experiments.data.datamodule import Source, Splits, require_choice
from vae_experiments.data.grey import GreyImages
from vae_experiments.data.memory import BINARIZE, binarized_levels, split_images
from vae_experiments.data.on_disk import OnDisk
from vae_experiments.errors import ConfigError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = tuple(f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))
IDX_WHAT = "the four uncompressed idx files (" + ", ".join(IDX_FILES) + ")"


@dataclass(kw_only=True)
class Digits(GreyImages, Source):
    """scikit-learn's 1,797 8x8 handwritten digits, values 0..16 (``levels`` 17, 2 binarised), bundled with
    scikit-learn: no files, runs anywhere. One permutation drawn with ``seed`` holds out ``test_size`` test images,
    then ``val_size`` validation images; the rest train (1,297 / 250 / 250 by default). Binarisation and
    ``train_subset``: see ``memory.split_images``; ``hflip`` mirrors training images at random."""

    name = "digits"
    values = 17

    val_size: int = 250
    test_size: int = 250

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (1, 8, 8)

    def splits(self) -> Splits:
        images = torch.from_numpy(load_digits().images).to(torch.uint8).unsqueeze(1)
        return self.split(images, None, self.val_size, self.test_size)


@dataclass(kw_only=True)
class MNIST(GreyImages, OnDisk):
    """MNIST: 60,000 training and 10,000 test 28x28 grey images (``levels`` 256, 2 binarised), read from the
    uncompressed idx files in ``root/MNIST/raw``. The training images are split with ``seed`` into
    60,000 - ``val_size`` / ``val_size`` (50,000 / 10,000 by default); the test split is the official one.
    Binarisation and ``train_subset``: see ``memory.split_images``; ``hflip`` mirrors training images at random."""

    name = "mnist"
    title = "MNIST"
    folder = "MNIST/raw"
    required = IDX_FILES
    what = IDX_WHAT
    torchvision_set: ClassVar[type[datasets.MNIST]] = datasets.MNIST
    values = 256

    val_size: int = 10_000

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (1, 28, 28)

    def fetch(self) -> None:
        self.torchvision_set(self.root, download=True)

    def splits(self) -> Splits:
        train = self.open(lambda: self.torchvision_set(self.root, train=True))
        test = self.open(lambda: self.torchvision_set(self.root, train=False))
        return self.split(train.data.unsqueeze(1), test.data.unsqueeze(1), self.val_size)


def _debian_fashion_mnist() -> bool:
    """Whether the Debian package ``dataset-fashion-mnist`` is installed (its four .gz idx files)."""
    return all((DEBIAN_FASHION_MNIST / f"{name}.gz").is_file() for name in IDX_FILES)


def read_idx_images(path: Path) -> Tensor:
    """The uint8 images ``(N, H, W)`` of a gzipped idx file (LeCun's format: two zero bytes, the type 0x08 for
    unsigned bytes, the number of dimensions, one big-endian int32 size per dimension, then the values).

    By hand because torchvision's reader takes uncompressed files only, and the point here is to read the Debian
    package's archives in place rather than decompress a copy of them.
    """
    data = gzip.decompress(path.read_bytes())
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return torch.frombuffer(bytearray(data[4 + 4 * dims :]), dtype=torch.uint8).reshape(shape)


@dataclass(kw_only=True)
class FashionMNIST(MNIST):
    """Fashion-MNIST: MNIST's sizes, splits and options, read from ``root/FashionMNIST/raw``; when those files are
    missing, straight from the gzipped idx files of the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``, see ``read_idx_images``), so it needs no network and writes nothing.
    """

    name = "fashion_mnist"
    title = "Fashion-MNIST"
    folder = "FashionMNIST/raw"
    what = f"{IDX_WHAT}, install the Debian package dataset-fashion-mnist (it fills {DEBIAN_FASHION_MNIST})"
    torchvision_set = datasets.FashionMNIST

    def present(self) -> bool:
        return super().present() or _debian_fashion_mnist()

    def splits(self) -> Splits:
        if super().present():
            return super().splits()
        train, test = (DEBIAN_FASHION_MNIST / f"{split}-images-idx3-ubyte.gz" for split in ("train", "t10k"))
        try:
            images = [read_idx_images(path).unsqueeze(1) for path in (train, test)]
        except (OSError, EOFError, ValueError, RuntimeError) as err:
            raise ConfigError(
                f"Fashion-MNIST in {DEBIAN_FASHION_MNIST} is unreadable ({err}): reinstall the Debian package "
                f"dataset-fashion-mnist, or put {IDX_WHAT} in {self.path}"
            ) from err
        return self.split(images[0], images[1], self.val_size)


@dataclass(kw_only=True)
class CIFAR10(OnDisk):
    """CIFAR-10: 50,000 training and 10,000 test RGB 32x32 images (``levels`` 256), read from the python version in
    ``root/cifar-10-batches-py``. The training images are split with ``seed`` into 50,000 - ``val_size`` /
    ``val_size`` (45,000 / 5,000 by default); the test split is the official one. ``train_subset``: see
    ``memory.split_images``; ``hflip`` mirrors training images at random. RGB: no binarisation."""

    name = "cifar10"
    title = "CIFAR-10"
    folder = "cifar-10-batches-py"
    required = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
    what = "the python version of CIFAR-10 (data_batch_1..5, test_batch, batches.meta)"

    val_size: int = 5_000
    train_subset: int | None = None
    seed: int = 0
    hflip: bool = False

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (3, 32, 32)

    @property
    def levels(self) -> int:
        return 256

    def fetch(self) -> None:
        datasets.CIFAR10(self.root, download=True)

    def splits(self) -> Splits:
        train = self.open(lambda: datasets.CIFAR10(self.root, train=True))
        test = self.open(lambda: datasets.CIFAR10(self.root, train=False))
        as_chw = lambda d: torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        return split_images(
            as_chw(train),
            as_chw(test),
            256,
            seed=self.seed,
            val_size=self.val_size,
            train_subset=self.train_subset,
            hflip=self.hflip,
        )


def synthetic_images(n: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """``n`` smooth random uint8 images of ``shape``: a 4x4 grid of uniform values per channel, upsampled
    bilinearly. Learnable structure at no I/O cost, for tests and benchmarks only."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, shape[0], 4, 4, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=tuple(shape[1:]), mode="bilinear", align_corners=True)
    return (images * 255).round().to(torch.uint8)


@dataclass(kw_only=True)
class Synthetic(Source):
    """``n_train`` / ``val_size`` / ``n_test`` smooth random 8-bit images of ``shape`` (C, H, W) (``levels`` 256, 2
    binarised; see ``synthetic_images``): the training and validation images drawn with ``seed``, the test images
    with ``seed + 1``. No files: for tests and benchmarks of shapes whose data are not on the machine (CelebA's
    218x178, CIFAR-10), never for reported results. Binarisation needs one channel; ``hflip`` mirrors training
    images at random."""

    name = "synthetic"

    shape: tuple[int, ...] = (3, 32, 32)
    n_train: int = 512
    val_size: int = 64
    n_test: int = 64
    binarize: str = "none"
    seed: int = 0
    hflip: bool = False

    def __post_init__(self) -> None:
        # plain ints, not Hydra's ListConfig: checkpoints must load with weights_only=True
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ConfigError(f"dataset.shape must be (C, H, W) with positive sizes, got {list(self.shape)}")
        require_choice("binarize", self.binarize, BINARIZE)
        if self.binarize != "none" and self.shape[0] != 1:
            raise ConfigError(
                f"dataset.binarize={self.binarize} needs grey images but dataset.shape has {self.shape[0]} "
                "channels: set dataset.binarize=none or dataset.shape=[1,H,W]"
            )

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def levels(self) -> int:
        return binarized_levels(self.binarize, 256)

    def splits(self) -> Splits:
        return split_images(
            synthetic_images(self.n_train + self.val_size, self.shape, self.seed),
            synthetic_images(self.n_test, self.shape, self.seed + 1),
            256,
            seed=self.seed,
            val_size=self.val_size,
            binarize=self.binarize,
            hflip=self.hflip,
        )
