"""``checkpoints/last.ckpt``: the run's latest state, what ``resume=true`` and ``ckpt_path=last`` continue from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from vae_experiments.resume import LAST_NAME


class LastCheckpoint(Checkpoint):
    """Writes ``dirpath/last.ckpt`` between training epochs and once more when fitting ends.

    Between epochs means when the next one starts (``on_train_epoch_start``): by then Lightning has finished the
    epoch (its validation, the epoch-mean training metrics handed to the loggers after ``on_train_epoch_end``, the
    epoch-level learning-rate schedulers, its progress counted), so the file holds the whole epoch and ``CSVRows``
    counts every row it logged. Lightning counts the coming epoch as ready just before this hook; the file records
    the state before that count (a finished epoch, none begun), which a resumed fit continues with that next epoch.
    The final write (``on_train_end``) comes after the final step and after every other callback's end of training
    (e.g. EMA weights copied into the model); it records a finished fit, so a resume from it trains no further and
    goes straight to the test phase. Nothing is written twice for one step, nor before the first step. The Trainer's
    ``AtomicCheckpointIO`` makes each write atomic.

    Lightning's ``ModelCheckpoint(save_last=True)`` (2.6) rewrites ``last.ckpt`` only when it also writes a top-k
    file, so with a ``monitor`` and ``save_top_k=1`` its ``last.ckpt`` is the best epoch, not the last one; and a
    file written in ``on_train_epoch_end`` misses the epoch's training-mean row in the logs. As a ``Checkpoint``,
    this callback runs after the other callbacks in every hook.
    """

    def __init__(self, dirpath: str) -> None:
        self.path = Path(dirpath) / LAST_NAME
        self._saved_step = 0
        self._between_epochs = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_step = trainer.global_step  # a resumed fit starts from a step that is on disk already

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._between_epochs = True
        try:
            self._save(trainer)
        finally:
            self._between_epochs = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._between_epochs:  # undo the coming epoch's "ready" count (Lightning's loop state: total and current)
            for tracker in checkpoint["loops"]["fit_loop"]["epoch_progress"].values():
                tracker["ready"] -= 1

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.fast_dev_run or trainer.global_step == self._saved_step:
            return
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step
