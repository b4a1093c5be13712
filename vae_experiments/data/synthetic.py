"""Random 8-bit images of any shape, with the DataModule interface: for tests and benchmarks only.

CelebA's full 218x178 frame, for instance, is not on every machine; a benchmark of the SOS-VAE step needs only
batches of the right shape. There is nothing to learn in this data and no result on it means anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from vae_experiments.data.device import DeviceBatches, check_flags, make_loader
from vae_experiments.data.memory import InMemoryDataset
from vae_experiments.errors import ConfigError


class SyntheticImages(LightningDataModule):
    """Uniform random values in ``0..levels-1`` of shape ``shape`` (C, H, W), read as x = value / (levels - 1).

    ``n_train`` / ``n_val`` / ``n_test`` images drawn once from a generator seeded with ``seed``, held in memory as
    uint8 (``InMemoryDataset``; on the accelerator with ``on_device``, as the real in-memory sets).
    """

    def __init__(
        self,
        shape: Sequence[int] = (3, 32, 32),
        levels: int = 256,
        n_train: int = 256,
        n_val: int = 64,
        n_test: int = 64,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool | str = False,
        on_device: bool | str = "auto",
    ) -> None:
        super().__init__()
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"dataset.shape must be [C, H, W] with positive sizes, got {list(shape)}")
        if not 2 <= levels <= 256:
            raise ConfigError(f"dataset.levels must be in 2..256 (8-bit storage), got {levels}")
        check_flags(pin_memory=pin_memory, on_device=on_device)
        self.shape = tuple(int(s) for s in shape)
        self._levels = levels
        self.sizes = (n_train, n_val, n_test)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.on_device = on_device
        self.train_set: InMemoryDataset | None = None
        self.val_set: InMemoryDataset | None = None
        self.test_set: InMemoryDataset | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def levels(self) -> int:
        return self._levels

    def check(self) -> None:
        """Nothing to find on disk."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        generator = torch.Generator().manual_seed(self.seed)
        data = torch.randint(0, self._levels, (sum(self.sizes), *self.shape), dtype=torch.uint8, generator=generator)
        train, val, test = data.split(list(self.sizes))
        scale = self._levels - 1
        self.train_set, self.val_set, self.test_set = (InMemoryDataset(t, scale=scale) for t in (train, val, test))

    def _loader(self, dataset: InMemoryDataset | None, batch_size: int, shuffle: bool) -> DataLoader | DeviceBatches:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a DataLoader")
        trainer = getattr(self, "trainer", None)
        return make_loader(dataset, batch_size, shuffle, trainer, self.on_device, self.pin_memory, self.num_workers)

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)
