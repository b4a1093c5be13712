"""Batches drawn on the accelerator from a split held there: no DataLoader, no workers, no host-to-device copies."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from vae_experiments.data.memory import InMemoryDataset, collate_batch
from vae_experiments.errors import ConfigError


class DeviceBatches:
    """An iterable of batches of an ``InMemoryDataset`` moved once to ``device``.

    Every epoch draws one permutation on the device (``shuffle``) from a generator seeded with ``seed + epoch``, so
    that all ranks agree on it; rank ``rank`` of ``world`` takes every ``world``-th example of it, as Lightning's
    ``DistributedSampler`` would (Lightning does not shard an iterable that is not a DataLoader). With a ``trainer``
    the epoch is the trainer's current one, so a fit resumed from a checkpoint draws the uninterrupted fit's orders;
    without one, each pass counts one epoch. Each batch is one ``index_select`` and the split's transform (scaling,
    dynamic binarisation, flips), all on the device.
    """

    def __init__(
        self,
        dataset: InMemoryDataset,
        batch_size: int,
        shuffle: bool,
        device: torch.device | str,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        trainer: Any = None,
    ) -> None:
        self.dataset = dataset.to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world = world
        self.epoch = 0
        self.trainer = trainer

    def _order(self) -> Tensor:
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator(self.device).manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, device=self.device, generator=generator)
        else:
            order = torch.arange(n, device=self.device)
        return order[self.rank :: self.world]

    def __len__(self) -> int:
        return math.ceil(len(range(self.rank, len(self.dataset), self.world)) / self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        if self.trainer is not None:
            self.epoch = self.trainer.current_epoch
        order = self._order()
        self.epoch += 1
        for index in order.split(self.batch_size):
            yield self.dataset.take(index)


def require_true_false_or_auto(**flags: bool | str) -> None:
    """Each ``dataset.KEY=value`` of ``flags`` (``pin_memory``, ``on_device``) is true, false or auto, else a
    one-line ``ConfigError``."""
    for key, value in flags.items():
        if not isinstance(value, bool) and value != "auto":
            raise ConfigError(f"dataset.{key} must be true, false or auto, got {value!r}")


def keep_on_device(dataset: InMemoryDataset, device: torch.device, on_device: bool | str) -> bool:
    """``auto``: on a CUDA device, when the split takes under a quarter of the free memory."""
    if on_device != "auto":
        return bool(on_device)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return dataset.data.numel() * dataset.data.element_size() < free / 4


def make_loader(
    dataset: Dataset[Tensor],
    batch_size: int,
    shuffle: bool,
    trainer: Any,
    sampler: Sampler[int] | None = None,
    seed: int = 0,
    on_device: bool | str = "auto",
    pin_memory: bool | str = False,
    num_workers: int = 0,
) -> DataLoader | DeviceBatches:
    """``DeviceBatches`` for an in-memory split kept on the trainer's device (shuffled by ``seed`` and the epoch),
    else a DataLoader over ``sampler`` (batches pinned on CUDA with ``pin_memory: auto``). Without a trainer the
    device is the CPU."""
    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    if isinstance(dataset, InMemoryDataset) and keep_on_device(dataset, device, on_device):
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return DeviceBatches(dataset, batch_size, shuffle, device, seed, rank, world, trainer)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda" if pin_memory == "auto" else pin_memory,
        persistent_workers=num_workers > 0,
        collate_fn=collate_batch if isinstance(dataset, InMemoryDataset) else None,
    )
