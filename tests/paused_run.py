"""``python -m vae_experiments.train ARGS`` that waits, at the point ``$PAUSE_AT`` names, until the run is signalled
(at most four minutes), after writing the file ``$PAUSE_MARKER``: a test can then signal a run at that point,
however loaded the machine. ``PAUSE_AT``: ``test`` (the first test batch), ``step:N`` (the start of the training
batch after N optimiser steps) or ``fid`` (after the FID's first batch of generated images, saved; the Inception is
``process_helpers.RandomProjection``). Run as a script by ``process_helpers.start_cli(..., pause_at=...)``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from process_helpers import RandomProjection

from vae_experiments import train
from vae_experiments.callbacks.resumable_test import FIDProgress
from vae_experiments.metrics import evaluations
from vae_experiments.metrics.fid import RunningStats
from vae_experiments.module import VAEModule

test_step = VAEModule.test_step
on_train_batch_start = VAEModule.on_train_batch_start
fid_update = FIDProgress.update
WHERE = os.environ.get("PAUSE_AT", "test")


def wait_for_a_signal(module: VAEModule) -> None:
    Path(os.environ["PAUSE_MARKER"]).write_text(f"{WHERE}\n")
    deadline = time.monotonic() + 240
    while not module.trainer.received_sigterm and time.monotonic() < deadline:  # set by SIGTERM and SIGINT
        time.sleep(0.01)


def paused_test_step(self: VAEModule, batch: Any, batch_idx: int) -> None:
    if batch_idx == 0:
        wait_for_a_signal(self)
    test_step(self, batch, batch_idx)


def paused_train_batch_start(self: VAEModule, batch: Any, batch_idx: int) -> None:
    if self.global_step == int(WHERE.removeprefix("step:")):
        wait_for_a_signal(self)
    on_train_batch_start(self, batch, batch_idx)


def paused_fid_update(self: FIDProgress, name: str, running: RunningStats, finished: bool) -> None:
    fid_update(self, name, running, finished)
    if name == "generated" and not finished:
        Path(os.environ["PAUSE_MARKER"]).write_text(f"{WHERE}\n")
        time.sleep(240)  # outside a Trainer call a signal stops the run at once: ``Interrupted`` is raised here


if __name__ == "__main__":
    if WHERE == "test":
        VAEModule.test_step = paused_test_step
    elif WHERE == "fid":
        FIDProgress.every_s = 0.0  # saved after every batch
        FIDProgress.update = paused_fid_update
        evaluations.load_inception = lambda weights, device: RandomProjection(64)
    else:
        VAEModule.on_train_batch_start = paused_train_batch_start
    sys.argv[0] = "vae-train"
    train.main()
