"""Training throughput: the median images per second of the optimisation steps (data loading excluded)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L
import torch


class Throughput(L.Callback):
    """Times each training batch from ``on_train_batch_start`` to ``on_train_batch_end``, skips the first ``warmup``
    steps, and reports ``train/images_per_sec`` as the median over the fit.

    On CUDA the batch is timed with CUDA events, read once per epoch: timing never makes the host wait for the GPU
    inside the loop (a ``synchronize`` per batch would stall the queue that keeps the GPU busy). The rates so far are
    part of every checkpoint, so a resumed run reports the median over all of its steps, and a run resumed after its
    fit had finished (killed while testing) reports the fit's.
    """

    # Not Lightning's ThroughputMonitor: it synchronises the GPU after every batch, its rate runs from batch end to
    # batch end over a window (data loading and everything between the steps counted), and it keeps nothing in the
    # checkpoint; train/images_per_sec is the median step rate of the whole fit, data loading excluded, resumable.

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = warmup
        self.rates: list[float] = []
        self._start: float | torch.cuda.Event = 0.0
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event, int]] = []

    def state_dict(self) -> dict[str, Any]:
        self._resolve()
        return {"rates": torch.tensor(self.rates, dtype=torch.float64)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rates = state_dict["rates"].tolist()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        if pl_module.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if trainer.global_step <= self.warmup:
            return
        images = batch.shape[0] * trainer.world_size
        if isinstance(self._start, torch.cuda.Event):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((self._start, end, images))
            return
        elapsed = time.perf_counter() - self._start
        if elapsed > 0:
            self.rates.append(images / elapsed)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resolve()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resolve()

    def _resolve(self) -> None:
        if not self._pending:
            return
        self._pending[-1][1].synchronize()
        for start, end, images in self._pending:
            ms = start.elapsed_time(end)
            if ms > 0:
                self.rates.append(1000 * images / ms)
        self._pending.clear()

    @property
    def images_per_sec(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None
