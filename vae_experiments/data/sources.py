"""Where each image data set lives, how to tell it is missing, how to download it, and how to load it in
memory.

Every in-memory loader returns uint8 tensors ``(N, C, H, W)``: the training pool and the official test split,
or ``None`` for the test split when the set has none (it is then carved out of the pool,
``ImageSet.test_size``). Nothing here downloads unless ``download()`` is called, which the DataModule does
only for ``download=true``.
"""

from __future__ import annotations

import contextlib
import gzip
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import Tensor
from torchvision import datasets
from torchvision.transforms import v2

from vae_experiments.errors import ConfigError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = tuple(f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))
CELEBA_LISTS = (
    "list_eval_partition.txt",
    "identity_CelebA.txt",
    "list_attr_celeba.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
)
OMNIGLOT_SIZE = 28
OMNIGLOT_CACHE = f"omniglot{OMNIGLOT_SIZE}.pt"


@dataclass(frozen=True)
class ImageSet:
    """Static facts about one image data set."""

    title: str
    folder: str
    shape: tuple[int, int, int]
    levels: int
    required: tuple[str, ...] = ()
    what: str = ""
    test_size: int | None = None

    @property
    def grey(self) -> bool:
        return self.shape[0] == 1


SETS: dict[str, ImageSet] = {
    "digits": ImageSet("digits", "", (1, 8, 8), 17, test_size=250),
    "mnist": ImageSet(
        "MNIST",
        "MNIST/raw",
        (1, 28, 28),
        256,
        IDX_FILES,
        "the four uncompressed idx files (" + ", ".join(IDX_FILES) + ")",
    ),
    "fashion_mnist": ImageSet(
        "Fashion-MNIST",
        "FashionMNIST/raw",
        (1, 28, 28),
        256,
        IDX_FILES,
        "the four uncompressed idx files (" + ", ".join(IDX_FILES) + f"), install the Debian package "
        f"dataset-fashion-mnist (it fills {DEBIAN_FASHION_MNIST})",
    ),
    "cifar10": ImageSet(
        "CIFAR-10",
        "cifar-10-batches-py",
        (3, 32, 32),
        256,
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
        "the python version of CIFAR-10 (data_batch_1..5, test_batch, batches.meta)",
    ),
    "celeba": ImageSet(
        "CelebA",
        "celeba",
        (3, 218, 178),
        256,
        ("img_align_celeba", *CELEBA_LISTS),
        "img_align_celeba/ and " + ", ".join(CELEBA_LISTS),
    ),
    "omniglot": ImageSet(
        "Omniglot",
        "omniglot-py",
        (1, OMNIGLOT_SIZE, OMNIGLOT_SIZE),
        256,
        ("images_background", "images_evaluation", "images_background.zip", "images_evaluation.zip"),
        "images_background.zip and images_evaluation.zip and their extracted folders",
        test_size=8070,
    ),
}


def _debian_fashion_mnist() -> bool:
    return all((DEBIAN_FASHION_MNIST / f"{name}.gz").is_file() for name in IDX_FILES)


def missing_message(name: str, root: str | Path) -> str | None:
    """The one-line ConfigError message when ``name``'s files are not under ``root``, else ``None``."""
    spec = SETS[name]
    folder = Path(root) / spec.folder
    if all((folder / f).exists() for f in spec.required):
        return None
    if name == "fashion_mnist" and _debian_fashion_mnist():
        return None
    if name == "omniglot" and (folder / OMNIGLOT_CACHE).is_file():
        return None
    return f"{spec.title} not found in {folder}: put {spec.what} there or set dataset.download=true"


def open_torchvision(name: str, root: str | Path, make: Callable[[], Any]) -> Any:
    """Build a torchvision data set; its 'not found or corrupted' or bad-file error is a ConfigError."""
    try:
        return make()
    except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as err:
        folder = Path(root) / SETS[name].folder
        raise ConfigError(
            f"{SETS[name].title} in {folder} is incomplete or corrupted (torchvision: {err}): "
            f"put {SETS[name].what} there or set dataset.download=true"
        ) from err


def download(name: str, root: str | Path) -> None:
    """Fetch ``name`` into ``root`` with torchvision (needs a network; CelebA also needs ``gdown``)."""
    makers: dict[str, Callable[[], Any]] = {
        "mnist": lambda: datasets.MNIST(root, download=True),
        "fashion_mnist": lambda: datasets.FashionMNIST(root, download=True),
        "cifar10": lambda: datasets.CIFAR10(root, download=True),
        "celeba": lambda: datasets.CelebA(root, split="all", target_type=[], download=True),
        "omniglot": lambda: [datasets.Omniglot(root, background=b, download=True) for b in (True, False)],
    }
    if name in makers:
        makers[name]()


def synthetic_images(n: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """``n`` smooth random uint8 images of ``shape``: a 4x4 grid of uniform values per channel, upsampled
    bilinearly. Learnable structure at no I/O cost, for tests and benchmarks only."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, shape[0], 4, 4, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=tuple(shape[1:]), mode="bilinear", align_corners=True)
    return (images * 255).round().to(torch.uint8)


def load_digits_pool() -> tuple[Tensor, None]:
    """sklearn's 1,797 8x8 digits as uint8 values 0..16; no official test split."""
    images = torch.from_numpy(load_digits().images).to(torch.uint8)
    return images.unsqueeze(1), None


def _load_idx(name: str, cls: type[datasets.MNIST], root: str | Path) -> tuple[Tensor, Tensor]:
    train = open_torchvision(name, root, lambda: cls(root, train=True))
    test = open_torchvision(name, root, lambda: cls(root, train=False))
    return train.data.unsqueeze(1), test.data.unsqueeze(1)


def load_mnist(root: str | Path) -> tuple[Tensor, Tensor]:
    """MNIST's 60,000 training and 10,000 test images from ``root/MNIST/raw``."""
    return _load_idx("mnist", datasets.MNIST, root)


def load_fashion_mnist(root: str | Path) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST from ``root/FashionMNIST/raw``, first filled from the Debian package when it lacks the
    files.

    The Debian .gz files have rewritten gzip headers, so torchvision's md5 check of the archives fails: they
    are decompressed here and torchvision reads the raw idx files with ``download=False``.
    """
    raw = Path(root) / SETS["fashion_mnist"].folder
    if missing_message("fashion_mnist", root) is None and not all((raw / f).is_file() for f in IDX_FILES):
        raw.mkdir(parents=True, exist_ok=True)
        for name in IDX_FILES:
            with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz", "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return _load_idx("fashion_mnist", datasets.FashionMNIST, root)


def load_cifar10(root: str | Path) -> tuple[Tensor, Tensor]:
    """CIFAR-10's 50,000 train and 10,000 test images from ``root/cifar-10-batches-py``, (N, 3, 32, 32)."""
    train = open_torchvision("cifar10", root, lambda: datasets.CIFAR10(root, train=True))
    test = open_torchvision("cifar10", root, lambda: datasets.CIFAR10(root, train=False))
    as_chw = lambda d: torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return as_chw(train), as_chw(test)


def _omniglot_images(root: str | Path, background: bool) -> Tensor:
    resize = v2.Compose([v2.PILToTensor(), v2.Resize((OMNIGLOT_SIZE, OMNIGLOT_SIZE), antialias=True)])
    ds = open_torchvision("omniglot", root, lambda: datasets.Omniglot(root, background=background, transform=resize))
    # torchvision lists folders in os.listdir order; sort by path so the pool (and so the split) is the same
    # on every file system. This reads two private attributes of torchvision's Omniglot.
    order = sorted(
        range(len(ds)),
        key=lambda i: (ds._characters[ds._flat_character_images[i][1]], ds._flat_character_images[i][0]),
    )
    return torch.stack([ds[i][0] for i in order])


def load_omniglot(root: str | Path) -> tuple[Tensor, None]:
    """Omniglot's background and evaluation sets pooled (32,460 images), resized 105x105 -> 28x28, inverted.

    Not Burda et al.'s ``chardata.mat`` (24,345 train / 8,070 test, 28x28, used by IWAE/VLAE): here
    torchvision's original PNGs are resized with antialiasing and inverted so strokes are 1 and background 0
    (as in Burda's file); the DataModule then holds out a seeded random 8,070-image test split over all 50
    alphabets, so the numbers are comparable in kind but not identical to published Omniglot results. The
    resized tensor is cached in ``root/omniglot-py/omniglot28.pt`` (skipped if the folder is read-only).
    """
    cache = Path(root) / SETS["omniglot"].folder / OMNIGLOT_CACHE
    if cache.is_file():
        return torch.load(cache, weights_only=True), None
    images = 255 - torch.cat([_omniglot_images(root, background) for background in (True, False)])
    with contextlib.suppress(OSError):
        torch.save(images, cache)
    return images, None


IN_MEMORY_LOADERS: dict[str, Callable[[str | Path], tuple[Tensor, Tensor | None]]] = {
    "digits": lambda root: load_digits_pool(),
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "omniglot": load_omniglot,
}
