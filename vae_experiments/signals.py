"""SIGTERM and SIGINT stop a run so that it can be resumed: exit 143 / 130 and one line saying how to resume.

What is on disk when the run stops: ``checkpoints/last.ckpt`` as ``LastCheckpoint`` last wrote it, atomically: the
state after the last epoch that was followed by the start of another (so the epoch that was running, and at most
the one before it, are trained again), or the state after fitting when the signal came during the test phase; no
``metrics.json``. The partial epoch is not saved: a mid-epoch checkpoint would resume to other numbers than the
uninterrupted run (the epoch's data iterator, its running training means and the logging cadence start over in a new
process), while the state between epochs resumes exactly. During the test phase also ``test_progress.pt``: the test
loop's means and random state after its last finished batch, from which the resumed run's test loop continues
(``callbacks.resumable_test``); during the FID after it, ``fid_progress.pt``: its feature statistics as they stood
at most a minute before, from which the resumed run's FID continues."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

STOPPING = (signal.SIGTERM, signal.SIGINT)


class Interrupted(SystemExit):
    """The run stopped on ``signum``; the exit status is 128 + signum (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class StopOnSignal(L.Callback):
    """A context manager around a run that turns SIGTERM and SIGINT into ``Interrupted``, and the Trainer callback
    that keeps Lightning's loops told of a signal.

    While a Trainer call runs (``trainer_call``) the stop waits: the signal only sets the flag of Lightning's own
    SIGTERM handling (its loops raise ``SIGTERMException`` at the next batch boundary, and under DDP rank zero's flag
    reaches every rank), for SIGINT too, instead of a ``KeyboardInterrupt`` at an arbitrary point; a signal that came
    after the last batch stops the run when the call returns. Nothing is raised inside Lightning's set-up or
    teardown, whose clean-up would run twice. Anywhere else (data set-up, the extra evaluations after testing,
    writing files) the stop is immediate: every file the run writes is written atomically. A second signal stops at
    once. On the way out the handlers in place before are restored, and rank zero prints ``resume_hint``.
    """

    def __init__(self, resume_hint: str) -> None:
        self.resume_hint = resume_hint
        self.signum: int | None = None
        self._trainer: L.Trainer | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._previous = {s: signal.signal(s, self._handle) for s in STOPPING}
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if isinstance(exc, SIGTERMException | Interrupted):
            self.stop(self.signum or signal.SIGTERM)

    def stop(self, signum: int) -> None:
        """Print how to resume (rank zero) and raise ``Interrupted``."""
        if rank_zero_only.rank == 0:
            print(f"stopped by {signal.Signals(signum).name}; resume with: {self.resume_hint}", file=sys.stderr)
        raise Interrupted(signum) from None

    @contextmanager
    def trainer_call(self, trainer: L.Trainer) -> Iterator[None]:
        """Around ``trainer.fit`` or ``trainer.test``: a signal meanwhile waits for a batch boundary or the call's
        return, and then stops the run (``Interrupted``)."""
        self._trainer = trainer
        try:
            yield
        finally:
            self._trainer = None
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if not first or self._trainer is None:
            raise Interrupted(self.signum)
        self._tell_loops()

    def _tell_loops(self) -> None:
        # Lightning's SIGTERM handler sets this flag; its loops check it after every batch (there is no public setter)
        if self._trainer is not None:
            self._trainer._signal_connector.received_sigterm = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.signum is not None:  # came during set-up, before Lightning's handlers (re)set the flag to False
            self._tell_loops()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.signum is not None:
            self._tell_loops()
