"""Several jobs of a sweep at once (``hydra/launcher=parallel``): each job in its own process, n_jobs of them at the
same time, each with its share of the CPU threads."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import joblib
import torch
from conftest import FAST
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback

ROOT = Path(__file__).resolve().parent.parent
CLOCK = "job_clock.json"


class JobClock(Callback):
    """Writes into the job's folder when the job started and ended (wall clock, comparable across processes), its
    process id and its torch thread count. Each job first waits (at most ``patience`` seconds) until ``at_once`` jobs
    of the sweep have started: jobs that run at the same time meet there whatever the skew of their processes'
    start-up, while jobs run one after another cannot meet."""

    def __init__(self, at_once: int, patience: float = 30.0) -> None:
        self.at_once = at_once
        self.patience = patience

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        hydra_cfg = HydraConfig.get()
        sweep = Path(hydra_cfg.sweep.dir)
        (sweep / f"started_{hydra_cfg.job.num}").touch()
        self.record = {"start": time.time(), "pid": os.getpid(), "threads": torch.get_num_threads()}
        deadline = self.record["start"] + self.patience
        while len(list(sweep.glob("started_*"))) < self.at_once and time.time() < deadline:
            time.sleep(0.05)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        out = Path(HydraConfig.get().runtime.output_dir)
        (out / CLOCK).write_text(json.dumps({**self.record, "end": time.time()}))


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) spans that hold one instant in common."""
    return max(sum(start <= t < end for start, end in spans) for t, _ in spans)


def test_parallel_launcher_runs_n_jobs_at_once_with_a_share_of_the_threads(tmp_path: Path) -> None:
    n_jobs = 2
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the launcher's own share applies when these are unset
        env.pop(var, None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vae_experiments.train",
            "-m",
            "hydra/launcher=parallel",
            f"hydra.launcher.n_jobs={n_jobs}",
            "+hydra.callbacks.job_clock._target_=test_grid.JobClock",
            f"+hydra.callbacks.job_clock.at_once={n_jobs}",
            f"hydra.sweep.dir={tmp_path}",
            "seed=0,1,2,3",
            *FAST,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"sweep {tmp_path}: 4 jobs, 4 finished, 0 skipped (finished before), 0 failed" in result.stdout
    jobs = [tmp_path / str(i) for i in range(4)]
    assert all((job / "metrics.json").is_file() for job in jobs)
    clocks = [json.loads((job / CLOCK).read_text()) for job in jobs]
    spans = [(c["start"], c["end"]) for c in clocks]
    # n_jobs jobs ran at the same instant, never more; jobs that overlap ran in different processes
    assert most_at_once(spans) == n_jobs, spans
    for a, b in itertools.combinations(clocks, 2):
        if a["start"] < b["end"] and b["start"] < a["end"]:
            assert a["pid"] != b["pid"]
    assert {c["threads"] for c in clocks} == {max(1, joblib.cpu_count() // n_jobs)}
