"""``python -m vae_experiments.train ARGS`` whose first test batch waits (at most four minutes) until the run is
signalled: a test can then stop the run while its test loop certainly runs, however loaded the machine. The first
test batch writes the file named by ``$PAUSE_MARKER`` when it starts waiting. Run as a script by
``process_helpers.start_cli(..., pause_in_test=True)``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from vae_experiments import train
from vae_experiments.module import VAEModule

test_step = VAEModule.test_step


def paused_test_step(self: VAEModule, batch, batch_idx: int) -> None:
    if batch_idx == 0:
        Path(os.environ["PAUSE_MARKER"]).write_text("testing\n")
        deadline = time.monotonic() + 240
        while not self.trainer.received_sigterm and time.monotonic() < deadline:  # set by SIGTERM and SIGINT
            time.sleep(0.01)
    test_step(self, batch, batch_idx)


if __name__ == "__main__":
    VAEModule.test_step = paused_test_step
    sys.argv[0] = "vae-train"
    train.main()
