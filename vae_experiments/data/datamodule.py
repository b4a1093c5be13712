"""The one LightningDataModule of the project: every data set, its splits, binarisation and loaders."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vae_experiments.data import sources
from vae_experiments.data.celeba import celeba_shape, celeba_splits
from vae_experiments.data.device import DeviceBatches, check_flags, make_loader
from vae_experiments.data.memory import InMemoryDataset, binarize_once
from vae_experiments.data.toy2d import TOYS, sample_toy
from vae_experiments.errors import ConfigError

NAMES = (*sources.SETS, "toy2d", "synthetic")
BINARIZE = ("none", "static", "dynamic")
DEFAULT_VAL_SIZE = {
    "digits": 250,
    "mnist": 10_000,
    "fashion_mnist": 10_000,
    "cifar10": 5_000,
    "omniglot": 1_345,
    "toy2d": 5_000,
    "synthetic": 64,
}


class VAEDataModule(LightningDataModule):
    """Unlabelled float32 batches ``x`` of shape ``(B, *data_shape)`` in [0, 1] (toy2d: raw coordinates).

    Data sets (``name``):

    - ``digits``: sklearn's 1,797 8x8 digits (values 0..16, ``levels = 17``, x = value / 16); seeded split
      into 1,297 train / 250 val / 250 test (default ``val_size`` and ``test_size``). Bundled with
      scikit-learn.
    - ``mnist``, ``fashion_mnist``: 60,000 - ``val_size`` / ``val_size`` / 10,000 (official test split).
      Fashion-MNIST is read from ``root/FashionMNIST/raw``, else decompressed there from the Debian package
      ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
    - ``cifar10``: 50,000 - ``val_size`` / ``val_size`` / 10,000, RGB 32x32.
    - ``omniglot``: torchvision's background + evaluation PNGs resized to 28x28 and inverted (see
      ``sources.load_omniglot``; not Burda's file); seeded ``test_size`` (8,070) test split, then
      ``val_size``.
    - ``celeba``: per-item reads with workers; official partition or SOS-VAE's 10k subset (``subset``); full
      218x178 frame or ``image_size`` (resize + centre crop). See ``celeba.celeba_splits``.
    - ``synthetic``: ``n_train`` / ``val_size`` / ``n_test`` smooth random 8-bit images of ``shape`` (see
      ``sources.synthetic_images``), for tests and benchmarks of shapes whose data are not on the machine
      (CelebA's 218x178, CIFAR-10); never for reported results.
    - ``toy2d``: one of the Soft-IntroVAE 2-D sets (``toy``), ``n_train`` / ``val_size`` / ``n_test`` points
      drawn with ``seed`` (see ``toy2d``); ``scale`` multiplies the coordinates; ``data_shape = (2,)``,
      ``levels = None``.

    Binarisation (grey images only; RGB and toy data raise a ``ConfigError``): ``static`` draws one Bernoulli
    sample per image with a generator seeded by ``seed``, the same bits for every split and every epoch;
    ``dynamic`` (Burda et al.) re-draws the training images on every read, while validation and test images
    are binarised once with ``seed`` (the same bits ``static`` gives them) so that evaluation is
    deterministic.

    Splits: ``seed`` fixes every held-out split, ``train_subset`` (first examples of the shuffled training
    split) and the binarisation; the training run's seed does not change the data unless it is passed here.
    In-memory sets (all but CelebA) hold each split as ONE tensor; a batch is one vectorised index
    (``InMemoryDataset.__getitems__``).

    Order and sharding (the Trainer runs with ``use_distributed_sampler=false``): the training split is shuffled by a
    ``DistributedSampler`` seeded with ``shuffle_seed`` (the runner passes the run's ``seed``) whose epoch Lightning
    sets, so the order depends on (seed, epoch) only, never on the global RNG: a resumed run sees the same batches.
    Under DDP each rank takes its shard of that order; validation and test sets are split across ranks without the
    padding duplicates of a ``DistributedSampler`` (``UnrepeatedDistributedSampler``), so reduced metrics are exact.

    Loading: ``on_device`` (``auto``, ``true``, ``false``) holds an in-memory split on the trainer's device and
    draws batches there (``DeviceBatches``: no DataLoader, no host-to-device copies); ``auto`` does so on a CUDA
    device when the split takes under a quarter of the free GPU memory. ``pin_memory: auto`` pins the DataLoader's
    batches when training on CUDA (CelebA's per-item reads with workers).

    Missing data: ``check()`` raises a one-line ``ConfigError`` naming the folder, the files and
    ``dataset.download=true``. The constructor does not read the disk (so ``data_shape`` and ``levels`` are
    available to build the model without the data); the runner calls ``check()`` right after instantiating,
    and ``prepare_data()`` / ``setup()`` call it too. Nothing downloads unless ``download=true``.
    """

    def __init__(
        self,
        name: str = "digits",
        root: str | Path = "data",
        download: bool = False,
        binarize: str = "none",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool | str = False,
        on_device: bool | str = "auto",
        val_size: int | None = None,
        test_size: int | None = None,
        train_subset: int | None = None,
        seed: int = 0,
        hflip: bool = False,
        image_size: int | None = None,
        subset: int | None = None,
        toy: str = "8gaussians",
        n_train: int = 50_000,
        n_test: int = 5_000,
        scale: float = 1.0,
        shape: tuple[int, ...] | list[int] = (1, 28, 28),
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        if name not in NAMES:
            raise ConfigError(f"unknown dataset.name={name}: choose one of {', '.join(NAMES)}")
        if binarize not in BINARIZE:
            raise ConfigError(f"unknown dataset.binarize={binarize}: choose one of {', '.join(BINARIZE)}")
        if name == "synthetic" and (len(shape) != 3 or min(shape) < 1):
            raise ConfigError(f"dataset.shape must be (C, H, W) with positive sizes, got {list(shape)}")
        grey = shape[0] == 1 if name == "synthetic" else name != "toy2d" and sources.SETS[name].grey
        if binarize != "none" and not grey:
            raise ConfigError(
                f"dataset.binarize={binarize} needs grey images but {name} is not: set dataset.binarize=none"
            )
        if name == "toy2d" and toy not in TOYS:
            raise ConfigError(f"unknown dataset.toy={toy}: choose one of {', '.join(TOYS)}")
        if name == "celeba" and val_size is not None:
            raise ConfigError("CelebA has its own validation split: set dataset.val_size=null")
        if name != "celeba" and (image_size is not None or subset is not None):
            raise ConfigError(f"dataset.image_size and dataset.subset apply to celeba only: set them null for {name}")
        if test_size is not None and name not in ("digits", "omniglot"):
            raise ConfigError(f"{name} has a fixed test split: set dataset.test_size=null")
        check_flags(pin_memory=pin_memory, on_device=on_device)
        if hflip and name == "toy2d":
            raise ConfigError("dataset.hflip mirrors images, toy2d has none: set dataset.hflip=false")
        shape = [int(s) for s in shape]  # not Hydra's ListConfig: checkpoints must load with weights_only=True
        self.save_hyperparameters()
        self.name = name
        self.root = Path(root)
        self.download = download
        self.binarize = binarize
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.on_device = on_device
        self.val_size = DEFAULT_VAL_SIZE.get(name) if val_size is None else val_size
        fixed_sizes = name in ("toy2d", "synthetic")
        self.test_size = sources.SETS[name].test_size if test_size is None and not fixed_sizes else test_size
        self.train_subset = train_subset
        self.seed = seed
        self.hflip = hflip
        self.image_size = image_size
        self.subset = subset
        self.toy = toy
        self.n_train = n_train
        self.n_test = n_test
        self.scale = scale
        self.shape = tuple(shape)
        self.shuffle_seed = shuffle_seed
        self.train_set: Dataset[Tensor] | None = None
        self.val_set: Dataset[Tensor] | None = None
        self.test_set: Dataset[Tensor] | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        """(C, H, W) for images, (2,) for toy2d; known before ``setup``."""
        if self.name == "toy2d":
            return (2,)
        if self.name == "synthetic":
            return self.shape
        if self.name == "celeba":
            return celeba_shape(self.image_size)
        return sources.SETS[self.name].shape

    @property
    def levels(self) -> int | None:
        """Values per pixel: 2 when binarised, 17 for digits, 256 for 8-bit images, None for toy2d."""
        if self.name == "toy2d":
            return None
        return 2 if self.binarize != "none" else self._source_levels

    @property
    def _source_levels(self) -> int:
        return 256 if self.name == "synthetic" else sources.SETS[self.name].levels

    def check(self) -> None:
        """Raise a one-line ``ConfigError`` when the files are not on disk and ``download`` is off (fast)."""
        if self.name in ("digits", "toy2d", "synthetic") or self.download:
            return
        message = sources.missing_message(self.name, self.root)
        if message is not None:
            raise ConfigError(message)

    def prepare_data(self) -> None:
        """Download (only with ``download=true`` and only what is missing), then ``check()``."""
        if self.download and self.name not in ("digits", "toy2d", "synthetic"):
            if sources.missing_message(self.name, self.root) is not None:
                sources.download(self.name, self.root)
            self.download = False
        self.check()

    def setup(self, stage: str | None = None) -> None:
        """Load and split once (all three splits, whatever the stage)."""
        if self.train_set is not None:
            return
        self.check()
        if self.name == "celeba":
            self.train_set, self.val_set, self.test_set = celeba_splits(
                self.root, self.image_size, self.subset, self.hflip
            )
        elif self.name == "toy2d":
            points = sample_toy(self.toy, self.n_train + self.val_size + self.n_test, self.seed, self.scale)
            train, val, test = points.split([self.n_train, self.val_size, self.n_test])
            self.train_set, self.val_set, self.test_set = (InMemoryDataset(t.clone()) for t in (train, val, test))
        else:
            self._setup_in_memory()

    def _setup_in_memory(self) -> None:
        if self.name == "synthetic":
            pool = sources.synthetic_images(self.n_train + self.val_size, self.shape, self.seed)
            test = sources.synthetic_images(self.n_test, self.shape, self.seed + 1)
        else:
            pool, test = sources.IN_MEMORY_LOADERS[self.name](self.root)
        top = float(self._source_levels - 1)
        bits_pool = binarize_once(pool, top, self.seed) if self.binarize != "none" else pool
        order = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(self.seed))
        if test is None:
            test, order = bits_pool[order[: self.test_size]], order[self.test_size :]
        elif self.binarize != "none":
            test = binarize_once(test, top, self.seed + 1)
        val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        eval_scale = 1.0 if self.binarize != "none" else top
        if self.binarize == "dynamic":
            train = InMemoryDataset(pool[train_idx], scale=top, resample=True, hflip=self.hflip)
        else:
            train = InMemoryDataset(bits_pool[train_idx], scale=eval_scale, hflip=self.hflip)
        self.train_set = train
        self.val_set = InMemoryDataset(bits_pool[val_idx], scale=eval_scale)
        self.test_set = InMemoryDataset(test, scale=eval_scale)

    def _shards(self) -> tuple[int, int]:
        """(number of ranks, this rank): (1, 0) outside a Trainer."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: Dataset[Tensor] | None, batch_size: int, shuffle: bool) -> DataLoader | DeviceBatches:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a DataLoader")
        replicas, rank = self._shards()
        sampler: Sampler[int] | None = None
        if shuffle:
            sampler = DistributedSampler(dataset, replicas, rank, shuffle=True, seed=self.shuffle_seed)
        elif replicas > 1:
            sampler = UnrepeatedDistributedSampler(dataset, replicas, rank, shuffle=False)
        return make_loader(
            dataset,
            batch_size,
            shuffle,
            self.trainer,
            sampler=sampler,
            seed=self.shuffle_seed,
            on_device=self.on_device,
            pin_memory=self.pin_memory,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)
