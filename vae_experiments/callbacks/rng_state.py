"""Random-number-generator state in checkpoints, so a resumed run continues the same random stream."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RNGState(L.Callback):
    """Saves the Python, NumPy, torch CPU (and CUDA) generator states in every checkpoint and restores them on
    resume. Lightning restores model, optimiser and loop state but not these, and without them a resumed run draws
    different posterior samples and binarisations than the uninterrupted one.

    Timing: the state is captured when the checkpoint is written (``LastCheckpoint``: between two epochs, before the
    next epoch's data iterator exists) and restored when Lightning loads the callbacks' states, before the resumed
    fit creates its first data iterator; the same draws then follow in both runs. The data order does not depend on
    these states (the DataModule's sampler is seeded by (seed, epoch)). All ranks are seeded alike and draw alike, so
    rank zero's state (the one in the file) is every rank's.
    """

    def state_dict(self) -> dict[str, Any]:
        state = {
            "python": random.getstate(),
            # as plain types and tensors, so that torch.load(weights_only=True) accepts the checkpoint
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def _numpy_state() -> tuple[str, torch.Tensor, int, int, float]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached)
