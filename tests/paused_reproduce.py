"""``python scripts/reproduce.py ARGS`` whose training runs are ``tests/paused_run.py``: each waits where
``$PAUSE_AT`` names, after writing ``$PAUSE_MARKER``, until it is signalled, so that a test can signal the command
while a run is at that point."""

from __future__ import annotations

import sys
from pathlib import Path

from scripts import reproduce

PAUSED_RUN = str(Path(__file__).with_name("paused_run.py"))
train_command = reproduce.Job.train_command


def paused_train_command(job: reproduce.Job) -> list[str]:
    python, flag, module, *args = train_command(job)
    assert (flag, module) == ("-m", "vae_experiments.train")
    return [python, PAUSED_RUN, *args]


if __name__ == "__main__":
    reproduce.Job.train_command = paused_train_command
    sys.exit(reproduce.main())
