"""A callback for the resume test: SIGKILL its own process in the middle of a chosen epoch (no clean-up runs)."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class KillAt(L.Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch = epoch
        self.batch = batch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int):
        if trainer.current_epoch == self.epoch and i == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
