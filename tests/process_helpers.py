"""Runs as child processes, stopped by a signal at a point the test chooses (where ``tests/paused_run.py`` makes the
run wait for it, or when a file the run writes appears), and comparisons of a resumed run with an uninterrupted
one."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from vae_experiments import train as train_mod
from vae_experiments.train import CONFIG_DIR

ROOT = Path(CONFIG_DIR).parent
LAST = Path("checkpoints") / "last.ckpt"
# A small MLP, 4 epochs of 4 batches; every step's values logged and written at once, so a killed process leaves
# rows past its last checkpoint
TINY = [
    "encoder.hidden=[32]",
    "decoder.hidden=[32]",
    "trainer.max_epochs=4",
    "+trainer.limit_train_batches=4",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    "+logger.csv.flush_logs_every_n_steps=1",
    "eval.nll_samples=8",
    "eval.elbo_samples=2",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
]
STEPS = 16
TRAIN = "vae_experiments.train"
PAUSE_MARKER = "paused"  # written by tests/paused_run.py into the log's folder
TIMING = "train/images_per_sec"


class RandomProjection(nn.Module):
    """A cheap stand-in for the Inception (``compute_fid`` takes any module with ``out_features``)."""

    out_features = 16

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(pixels, self.out_features, bias=False)
        nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


def start_cli(args: list[str], log: Path, pause_at: str | None = None) -> subprocess.Popen[bytes]:
    """``vae-train ARGS`` as a child process, its output in ``log``. ``pause_at`` (``test``, ``step:N``, ``fid``): the
    run waits there until it is signalled, after writing ``log.parent / PAUSE_MARKER`` (``tests/paused_run.py``)."""
    marker = str(log.parent / PAUSE_MARKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "PAUSE_MARKER": marker}
    entry = ["-m", TRAIN]
    if pause_at is not None:
        env["PAUSE_AT"] = pause_at
        entry = [str(Path(__file__).with_name("paused_run.py"))]
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *entry, *args], stdout=out, stderr=out, env=env)


def wait_until(child: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path) -> None:
    """Return as soon as ``ready()``; fail if ``child`` ends first."""
    deadline = time.monotonic() + 240
    while not ready():
        assert child.poll() is None, f"the run ended too early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.01)


def signal_when(child: subprocess.Popen[bytes], ready: Callable[[], bool], signum: int, log: Path) -> int:
    """Send ``signum`` to ``child`` as soon as ``ready()``; its exit status. Fails if it ends first; prints the end
    of its log (which pytest shows when the test fails)."""
    wait_until(child, ready, log)
    child.send_signal(signum)
    status = child.wait(timeout=240)
    print(log.read_text()[-3000:])
    return status


def logged_steps(run: Path) -> list[int]:
    """The steps of the complete rows of the run's CSV (read while the run writes it)."""
    path = run / "csv" / "metrics.csv"
    rows = csv.DictReader(io.StringIO(path.read_text())) if path.is_file() else []
    return [int(r["step"]) for r in rows if (r.get("step") or "").isdigit() and None not in r.values()]


def assert_same_run(resumed: dict, uninterrupted: dict, run: Path, reference: Path) -> None:
    """Every key, every value but the timing; metrics.json as returned; the CSV file identical."""
    assert set(resumed) == set(uninterrupted)
    assert {k: v for k, v in resumed.items() if k != TIMING} == {k: v for k, v in uninterrupted.items() if k != TIMING}
    assert resumed[TIMING] > 0
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(resumed))
    assert (run / "csv" / "metrics.csv").read_text() == (reference / "csv" / "metrics.csv").read_text()


def launch(
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    main: Callable[[], None] = train_mod.main,
) -> tuple[int, str]:
    """``vae-train ARGS`` (or another entry point's ``main``) in this process: (exit status, stderr). The root
    logger's handlers are put back afterwards: Hydra's point at this test's captured output, which pytest closes."""
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["vae", *args])
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        main()
        status = 0
    except SystemExit as exc:
        status = int(exc.code or 0)
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
    return status, capsys.readouterr().err
