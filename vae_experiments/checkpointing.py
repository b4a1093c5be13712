"""Checkpoint files written atomically: the Trainer's ``CheckpointIO`` plugin for every checkpoint of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vae_experiments.atomic import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose files are written by ``write_atomically``: a checkpoint on disk is always a complete
    one, the new or the previous, whatever stops the write (SIGKILL, a full disk, a power loss). Local paths only,
    which run folders are. Lightning's own writer (fsspec) stages the file in the system's temporary folder and moves
    it; across file systems that move is a copy into the checkpoint's path, which a full disk or a crash truncates."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        write_atomically(Path(path), lambda f: torch.save(checkpoint, f))
