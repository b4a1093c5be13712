"""``csv/metrics.csv`` in step with the checkpoints, so a resumed run's curves continue without repeated steps."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from vae_experiments.csv_logger import ContinuedCSVLogger


class CSVRows(L.Callback):
    """Every checkpoint records how many rows each ``ContinuedCSVLogger`` has written (its buffer saved first); when a
    fit starts, each file is cut back to the count of the checkpoint it resumes from, or to nothing for a fresh fit.

    The rows logged before the resume point stay, and the rows a killed process logged after its last checkpoint go
    (the resumed run logs those steps again), so no step appears twice. Rank zero owns the files.
    """

    def __init__(self) -> None:
        self._loggers: list[ContinuedCSVLogger] = []
        self._resume_rows: dict[str, int] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._loggers = [logger for logger in trainer.loggers if isinstance(logger, ContinuedCSVLogger)]
        self._resume_rows = {}

    def state_dict(self) -> dict[str, Any]:
        rows = {}
        if rank_zero_only.rank == 0:
            for logger in self._loggers:
                logger.save()
                rows[logger.name] = logger.experiment.rows
        return {"rows": rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_rows = dict(state_dict["rows"])

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            for logger in self._loggers:
                logger.experiment.keep_rows(self._resume_rows.get(logger.name, 0))
