"""The one LightningDataModule of the project: a data ``Source`` served in batches by the ``Loading`` settings."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from lightning import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vae_experiments.data.device import DeviceBatches, make_loader, require_true_false_or_auto
from vae_experiments.errors import ConfigError

Splits = tuple[Dataset[Tensor], Dataset[Tensor], Dataset[Tensor]]


def require_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """``dataset.KEY`` is one of ``choices``, else a one-line ``ConfigError`` listing them."""
    if value not in choices:
        raise ConfigError(f"unknown dataset.{key}={value}: choose one of {', '.join(choices)}")


class Source(ABC):
    """One data set: the shape and levels of its examples, its files, and its train / validation / test splits.

    Every source is a dataclass whose fields are exactly its own options (so a constructor refuses any other);
    ``conf/dataset/NAME.yaml`` lists them beside the ``Loading`` options shared by all sources, flat, and builds the
    DataModule with ``_target_: vae_experiments.data.SOURCE.datamodule``. The constructor does not read the disk, so
    ``data_shape`` and ``levels`` are known before the data are.
    """

    name: ClassVar[str]

    @property
    @abstractmethod
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one example: (C, H, W) for images, (2,) for points."""

    @property
    @abstractmethod
    def levels(self) -> int | None:
        """Values per pixel of the batches (2 once binarised), ``None`` for continuous data."""

    @abstractmethod
    def splits(self) -> Splits:
        """Read and split the data: the training, validation and test sets."""

    def require_files(self) -> None:  # noqa: B027 (a source without files has none to require)
        """Raise a one-line ``ConfigError`` when files the source reads are missing."""

    def download_files(self) -> None:  # noqa: B027 (a source without files has none to fetch)
        """Fetch what is missing where the options allow it, then ``require_files``."""

    def options(self) -> dict[str, Any]:
        """The source's options as plain values (a path as a string, a shape as a list) for the run's hyper-parameters,
        which checkpoints store and load with ``weights_only=True``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def datamodule(cls, **node: Any) -> VAEDataModule:
        """The DataModule of one flat config node: its ``Loading`` keys serve the batches, the others are this
        source's options. Any other key is a one-line ``ConfigError`` that names it and lists the keys there are."""
        shared = [f.name for f in fields(Loading)]
        own = [f.name for f in fields(cls)]
        unknown = sorted(set(node) - {*shared, *own})
        if unknown:
            keys = ", ".join(f"dataset.{key}" for key in unknown)
            raise ConfigError(
                f"{keys} {'is not an option' if len(unknown) == 1 else 'are not options'} of dataset={cls.name}: "
                f"remove {'it' if len(unknown) == 1 else 'them'} (its options: {', '.join(own)}; "
                f"every data set's: {', '.join(shared)})"
            )
        source = cls(**{key: value for key, value in node.items() if key in own})
        return VAEDataModule(source, Loading(**{key: value for key, value in node.items() if key in shared}))


@dataclass(kw_only=True)
class Loading:
    """How any source's splits are served: batch sizes (``eval_batch_size`` defaults to ``batch_size``), DataLoader
    workers and pinning (``true``, ``false`` or ``auto``: pinned when training on CUDA), ``on_device`` (``true``,
    ``false`` or ``auto``, see ``VAEDataModule``) and ``shuffle_seed``, the seed of the training order (the runner
    passes the run's ``seed``)."""

    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int = 0
    pin_memory: bool | str = False
    on_device: bool | str = "auto"
    shuffle_seed: int = 0

    def __post_init__(self) -> None:
        require_true_false_or_auto(pin_memory=self.pin_memory, on_device=self.on_device)


class VAEDataModule(LightningDataModule):
    """Unlabelled float32 batches ``x`` of shape ``(B, *data_shape)`` in [0, 1] (toy2d: raw coordinates) drawn from
    ``source`` (its splits, binarisation and files: see ``vae_experiments.data``) as ``loading`` says.

    Order and sharding (the Trainer runs with ``use_distributed_sampler=false``): the training split is shuffled by a
    ``DistributedSampler`` seeded with ``shuffle_seed`` whose epoch Lightning sets, so the order depends on (seed,
    epoch) only, never on the global RNG: a resumed run sees the same batches. Under DDP each rank takes its shard of
    that order; validation and test sets are split across ranks without the padding duplicates of a
    ``DistributedSampler`` (``UnrepeatedDistributedSampler``), so reduced metrics are exact.

    Loading: ``on_device`` holds an in-memory split on the trainer's device and draws batches there
    (``DeviceBatches``: no DataLoader, no host-to-device copies); ``auto`` does so on a CUDA device when the split
    takes under a quarter of the free GPU memory. ``pin_memory: auto`` pins the DataLoader's batches when training on
    CUDA (CelebA's per-item reads with workers).

    Missing data: ``require_files()`` raises a one-line ``ConfigError`` naming the folder, the files and
    ``dataset.download=true``; the runner calls it right after building the DataModule, and ``prepare_data()`` /
    ``setup()`` call it too. Nothing downloads unless the source's ``download`` is true.
    """

    def __init__(self, source: Source, loading: Loading | None = None) -> None:
        super().__init__()
        self.source = source
        self.loading = loading or Loading()
        self.save_hyperparameters({"name": source.name, **source.options(), **asdict(self.loading)})
        self.train_set: Dataset[Tensor] | None = None
        self.val_set: Dataset[Tensor] | None = None
        self.test_set: Dataset[Tensor] | None = None

    @property
    def name(self) -> str:
        """The source's name: ``digits``, ``mnist``, ... (the FID reference statistics are cached under it)."""
        return self.source.name

    @property
    def data_shape(self) -> tuple[int, ...]:
        """(C, H, W) for images, (2,) for toy2d; known before ``setup``."""
        return self.source.data_shape

    @property
    def levels(self) -> int | None:
        """Values per pixel: 2 when binarised, 17 for digits, 256 for 8-bit images, None for toy2d."""
        return self.source.levels

    @property
    def batch_size(self) -> int:
        return self.loading.batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.loading.eval_batch_size or self.loading.batch_size

    def require_files(self) -> None:
        """Raise a one-line ``ConfigError`` when the files are not on disk and ``download`` is off (fast)."""
        self.source.require_files()

    def prepare_data(self) -> None:
        """Download (only with ``download=true`` and only what is missing), then require the files."""
        self.source.download_files()

    def setup(self, stage: str | None = None) -> None:
        """Load and split once (all three splits, whatever the stage)."""
        if self.train_set is not None:
            return
        self.require_files()
        self.train_set, self.val_set, self.test_set = self.source.splits()

    def _shards(self) -> tuple[int, int]:
        """(number of ranks, this rank): (1, 0) outside a Trainer."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: Dataset[Tensor] | None, batch_size: int, shuffle: bool) -> DataLoader | DeviceBatches:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a DataLoader")
        replicas, rank = self._shards()
        seed = self.loading.shuffle_seed
        sampler: Sampler[int] | None = None
        if shuffle:
            sampler = DistributedSampler(dataset, replicas, rank, shuffle=True, seed=seed)
        elif replicas > 1:
            sampler = UnrepeatedDistributedSampler(dataset, replicas, rank, shuffle=False)
        return make_loader(
            dataset,
            batch_size,
            shuffle,
            self.trainer,
            sampler=sampler,
            seed=seed,
            on_device=self.loading.on_device,
            pin_memory=self.loading.pin_memory,
            num_workers=self.loading.num_workers,
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)
