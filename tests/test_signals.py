"""SIGTERM and SIGINT stop a run so that it can be resumed: exit 143 / 130, one line with the command that resumes
it, no metrics.json; that command ends with the uninterrupted run's metrics and curves. A submitit job stopped by its
pre-emption signal is requeued and resumes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from process_helpers import (
    LAST,
    PAUSE_MARKER,
    STEPS,
    TINY,
    RandomProjection,
    assert_same_run,
    launch,
    signal_when,
    start_cli,
    wait_until,
)

from vae_experiments import evaluate as evaluate_mod
from vae_experiments.callbacks.resumable_test import FID_PROGRESS, TEST_PROGRESS
from vae_experiments.metrics import evaluations
from vae_experiments.train import train


def resume_command(log: Path, signum: int, run: Path) -> list[str]:
    """The arguments of the one ``vae-train`` command the stopped run printed."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("stopped by")]
    assert len(lines) == 1
    prefix = f"stopped by {signal.Signals(signum).name}; resume with: "
    assert lines[0].startswith(prefix)
    argv = shlex.split(lines[0].removeprefix(prefix))
    assert argv[0] == "vae-train" and argv[-2:] == ["resume=true", f"hydra.run.dir={run}"]
    return argv[1:]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_training_stops_resumably(make_cfg, tmp_path: Path, monkeypatch, capsys, signum: int) -> None:
    """The signal during the second epoch (the run waits at the start of its sixth training batch): the run stops
    at the end of that batch, keeps the first epoch's checkpoint, and the printed command resumes it to the
    uninterrupted run."""
    uninterrupted = train(make_cfg(*TINY, fast=False, out=tmp_path / "a"))
    run, log = tmp_path / "b", tmp_path / "b.log"
    child = start_cli([*TINY, f"hydra.run.dir={run}"], log, pause_at="step:5")
    assert signal_when(child, (tmp_path / PAUSE_MARKER).is_file, signum, log) == 128 + signum
    assert not (run / "metrics.json").exists()
    assert torch.load(run / LAST, weights_only=True)["global_step"] == 4  # the end of the first epoch
    args = resume_command(log, signum, run)
    assert launch(args, monkeypatch, capsys)[0] == 0
    resumed = json.loads((run / "metrics.json").read_text())
    assert_same_run(resumed, json.loads(json.dumps(uninterrupted)), run, tmp_path / "a")


def test_sigterm_while_testing_writes_no_metrics_and_resumes_after_the_last_test_batch(
    make_cfg, tmp_path: Path, monkeypatch, capsys
) -> None:
    """SIGTERM while the test loop runs (its first batch waits for the signal, then finishes): exit 143, no
    metrics.json, the test loop's progress after that batch; the resume trains no more and computes only the second
    test batch, to the uninterrupted run's metrics. ``vae-eval`` continues that progress for the same weights and
    settings, also with a smaller ``eval.nll_max_rows`` (the same draws in smaller chunks, the same figures to float
    rounding), and starts over for another k."""
    args = [*TINY, "dataset.eval_batch_size=100"]  # two test batches
    uninterrupted = train(make_cfg(*args, fast=False, out=tmp_path / "a"))
    run, log = tmp_path / "b", tmp_path / "b.log"
    child = start_cli([*args, f"hydra.run.dir={run}"], log, pause_at="test")
    assert signal_when(child, (tmp_path / PAUSE_MARKER).is_file, signal.SIGTERM, log) == 143
    assert torch.load(run / LAST, weights_only=True)["global_step"] == STEPS
    assert not (run / "metrics.json").exists()
    assert torch.load(run / TEST_PROGRESS, weights_only=True)["batches"] == 1
    for name in ("same", "other_k", "fewer_rows"):
        (tmp_path / name).mkdir()
        shutil.copy(run / TEST_PROGRESS, tmp_path / name / TEST_PROGRESS)

    status, err = launch(resume_command(log, signal.SIGTERM, run), monkeypatch, capsys)
    assert status == 0 and "test phase: continuing after 1 of 2 batches" in err
    resumed = json.loads((run / "metrics.json").read_text())
    assert_same_run(resumed, json.loads(json.dumps(uninterrupted)), run, tmp_path / "a")
    assert not (run / TEST_PROGRESS).exists()

    def evaluate(folder: str, k: int, rows: int = 4096) -> tuple[dict, str]:
        own = ["eval.nll_samples=8", "eval.elbo_samples=2", f"eval.nll_max_rows={rows}"]
        argv = [f"ckpt_path={run / LAST}", f"hydra.run.dir={tmp_path / folder}", *own, f"eval.nll_samples={k}"]
        status, err = launch(argv, monkeypatch, capsys, evaluate_mod.main)
        assert status == 0
        metrics = json.loads((tmp_path / folder / "metrics.json").read_text())
        return {key: v for key, v in metrics.items() if key.startswith("test/")}, err

    same, err = evaluate("same", 8)
    assert "continuing after 1 of 2" in err and same == {k: v for k, v in resumed.items() if k.startswith("test/")}
    fewer_rows, err = evaluate("fewer_rows", 8, rows=1)  # one importance sample per chunk
    assert "continuing after 1 of 2" in err and fewer_rows.keys() == same.keys()
    for key, value in same.items():
        assert fewer_rows[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key
    other_k, err = evaluate("other_k", 16)
    assert "continuing" not in err and other_k == evaluate("fresh", 16)[0]
    assert "is the progress of other settings: eval.nll_samples 8 -> 16 (batches done: 1); starting over" in err
    assert other_k["test/nll"] != same["test/nll"]


def test_sigterm_during_the_fid_resumes_it_after_the_images_it_saved(
    make_cfg, tmp_path: Path, monkeypatch, capsys
) -> None:
    """SIGTERM while the FID after the test loop runs (the run waits after its first batch of generated images,
    saved): exit 143, no metrics.json, ``fid_progress.pt`` holding those images; the resumed run generates only the
    remaining ones and ends with the uninterrupted run's metrics, the FID's included."""
    monkeypatch.setenv("VAE_EXPERIMENTS_CACHE", str(tmp_path / "cache"))  # the reference statistics
    monkeypatch.setattr(evaluations, "load_inception", lambda weights, device: RandomProjection(64))
    args = [*TINY, "eval.fid.enabled=true", "eval.fid.n=40", "eval.fid.batch_size=10"]
    uninterrupted = train(make_cfg(*args, fast=False, out=tmp_path / "a"))
    monkeypatch.setenv("VAE_EXPERIMENTS_CACHE", str(tmp_path / "cache_b"))  # computed again, as in the first run
    run, log = tmp_path / "b", tmp_path / "b.log"
    child = start_cli([*args, f"hydra.run.dir={run}"], log, pause_at="fid")
    assert signal_when(child, (tmp_path / PAUSE_MARKER).is_file, signal.SIGTERM, log) == 143
    assert not (run / "metrics.json").exists()
    saved = torch.load(run / FID_PROGRESS, weights_only=True)["sets"]
    assert list(saved) == ["generated"] and saved["generated"]["n"] == 10 and not saved["generated"]["finished"]
    drawn: list[int] = []
    sample = evaluations.VAE.sample
    monkeypatch.setattr(evaluations.VAE, "sample", lambda self, k: drawn.append(k) or sample(self, k))
    status, err = launch(resume_command(log, signal.SIGTERM, run), monkeypatch, capsys)
    assert status == 0 and "FID: continuing the generated images after 10" in err
    assert drawn == [10, 10, 10]  # images 10 to 39
    resumed = json.loads((run / "metrics.json").read_text())
    assert_same_run(resumed, json.loads(json.dumps(uninterrupted)), run, tmp_path / "a")
    assert resumed["test/fid_n_generated"] == 40 and not (run / FID_PROGRESS).exists()


@pytest.mark.parametrize(
    ("method", "nth", "step"),
    [("_run", 1, None), ("_teardown", 1, STEPS), ("_run", 2, STEPS)],
    ids=["fit set-up", "fit teardown", "test set-up"],
)
def test_sigterm_inside_lightnings_set_up_or_teardown_stops_resumably(
    tmp_path: Path, monkeypatch, capsys, method: str, nth: int, step: int | None
) -> None:
    """SIGTERM while Lightning sets up or tears down a Trainer call (its ``nth`` ``method`` call: fit's, then
    test's): nothing is raised inside it; the run stops at the first batch boundary (set-up, before any checkpoint)
    or when the call returns (teardown: the final checkpoint kept), exit 143 with one resume line, no metrics.json."""
    original = getattr(L.Trainer, method)
    calls: list[int] = []

    def signalled(self: L.Trainer, *args, **kwargs):
        calls.append(1)
        if len(calls) == nth:
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the next line runs
        return original(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, method, signalled)
    run = tmp_path / "run"
    status, err = launch([*TINY, f"hydra.run.dir={run}"], monkeypatch, capsys)
    assert status == 143 and err.count("stopped by SIGTERM; resume with: ") == 1, err[-3000:]
    assert not (run / "metrics.json").exists()
    if step is None:
        assert not (run / LAST).exists()
    else:
        assert torch.load(run / LAST, weights_only=True)["global_step"] == step


def job_processes(ancestor: int) -> list[int]:
    """The submitit job processes (``python -m submitit.core._submit``) that descend from ``ancestor`` (Linux)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            parents[int(pid)] = int(rest.rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile

    def descends(pid: int) -> bool:
        while pid in parents and pid != ancestor:
            pid = parents[pid]
        return pid == ancestor

    jobs = []
    for pid in parents:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"submitit.core._submit" in cmdline and descends(pid):
            jobs.append(pid)
    return jobs


@pytest.mark.slow  # three fresh Python processes with torch: the launcher, the job, the requeued job
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the job's process in /proc (Linux)")
def test_submitit_job_stopped_by_its_preemption_signal_is_requeued_and_resumes(make_cfg, tmp_path: Path) -> None:
    """hydra/launcher=submitit_local: the job gets USR2 (submitit's pre-emption signal) after its first epoch;
    submitit requeues it (the same config), it resumes from its folder's last.ckpt and ends with the uninterrupted
    run's metrics and curves."""
    uninterrupted = train(make_cfg(*TINY, fast=False, out=tmp_path / "a"))
    sweep, log = tmp_path / "sweep", tmp_path / "sweep.log"
    child = start_cli(["-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}", *TINY], log)
    job = sweep / "0"

    def first_epoch_saved() -> bool:
        return (job / LAST).is_file() and bool(job_processes(child.pid))

    wait_until(child, first_epoch_saved, log)
    for pid in job_processes(child.pid):
        os.kill(pid, signal.SIGUSR2)
    assert child.wait(timeout=600) == 0
    assert f"resuming from {job / LAST}" in (job / "train.log").read_text()
    resumed = json.loads((job / "metrics.json").read_text())
    assert_same_run(resumed, json.loads(json.dumps(uninterrupted)), job, tmp_path / "a")
