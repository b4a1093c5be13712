"""The last validation epoch's ``val/*`` metrics, for ``metrics.json``, carried in every checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L


class LastValidation(L.Callback):
    """``metrics``: the ``val/*`` values of the latest validation epoch (the sanity check excluded).

    They are part of every checkpoint, so a run resumed after its fit had finished (killed while testing: Lightning
    then trains and validates no more) reports the same ``val/*`` as the uninterrupted run.
    """

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    def state_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.metrics)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.metrics = dict(state_dict["metrics"])
