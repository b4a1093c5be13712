"""Training throughput: the median images per second of the optimisation steps (data loading excluded)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L
import torch


class Throughput(L.Callback):
    """Times each training batch from ``on_train_batch_start`` to ``on_train_batch_end`` (synchronising CUDA), skips
    the first ``warmup`` steps, and logs ``train/images_per_sec`` as the median over the fit."""

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = warmup
        self.rates: list[float] = []
        self._start = 0.0

    def _sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self._sync(pl_module)
        elapsed = time.perf_counter() - self._start
        if trainer.global_step > self.warmup and elapsed > 0:
            self.rates.append(batch.shape[0] * trainer.world_size / elapsed)

    @property
    def images_per_sec(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None
