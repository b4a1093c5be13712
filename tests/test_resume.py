"""A run killed at any moment resumes to the uninterrupted run: the same metrics.json, key by key, and the same CSV
curves. Checkpoints survive a full disk; run folders are unique and never taken over by another run."""

from __future__ import annotations

import datetime
import errno
import io
import json
import os
import pickle
import signal
from pathlib import Path

import hydra.core.utils
import pytest
import torch
from conftest import compose_cfg
from process_helpers import (
    LAST,
    PAUSE_MARKER,
    STEPS,
    TINY,
    assert_same_run,
    launch,
    logged_steps,
    signal_when,
    start_cli,
)

from vae_experiments import evaluate as evaluate_mod
from vae_experiments import run_dirs
from vae_experiments.train import train


@pytest.mark.parametrize("loader", ["dataloader", "on_device"])
def test_killed_mid_training_resumes_to_the_uninterrupted_run(make_cfg, tmp_path: Path, loader: str) -> None:
    """SIGKILL after the first epoch's checkpoint and after the process logged a later step (the run waits at the
    start of its seventh training batch); ``resume=true``. ``on_device``: the batches drawn on the device (the GPU
    default), whose epoch must follow the trainer's."""
    args = [*TINY, f"dataset.on_device={str(loader == 'on_device').lower()}"]
    uninterrupted = train(make_cfg(*args, fast=False, out=tmp_path / "a"))
    run, log = tmp_path / "b", tmp_path / "b.log"
    child = start_cli([*args, f"hydra.run.dir={run}"], log, pause_at="step:6")
    assert signal_when(child, (tmp_path / PAUSE_MARKER).is_file, signal.SIGKILL, log) == -9
    assert torch.load(run / LAST, weights_only=True)["global_step"] == 4 and not (run / "metrics.json").exists()
    assert max(logged_steps(run)) > 4  # rows the resumed run logs again
    resumed = train(make_cfg(*args, "resume=true", fast=False, out=run))
    assert_same_run(resumed, uninterrupted, run, tmp_path / "a")


def test_killed_while_testing_resumes_to_the_uninterrupted_run(make_cfg, tmp_path: Path) -> None:
    """SIGKILL while the test loop runs (its first batch waits for the signal); the resume trains no more and
    tests again."""
    args = TINY
    uninterrupted = train(make_cfg(*args, fast=False, out=tmp_path / "a"))
    run, log = tmp_path / "b", tmp_path / "b.log"
    child = start_cli([*args, f"hydra.run.dir={run}"], log, pause_at="test")
    assert signal_when(child, (tmp_path / PAUSE_MARKER).is_file, signal.SIGKILL, log) == -9
    assert torch.load(run / LAST, weights_only=True)["global_step"] == STEPS
    assert not (run / "metrics.json").exists()
    resumed = train(make_cfg(*args, "ckpt_path=last", fast=False, out=run))
    assert_same_run(resumed, uninterrupted, run, tmp_path / "a")
    assert train(make_cfg(*args, "resume=true", fast=False, out=run)) == resumed  # finished: its stored metrics


def test_finished_run_continued_for_more_epochs_matches_the_longer_run(make_cfg, tmp_path: Path) -> None:
    """``ckpt_path=last`` with a larger ``max_epochs`` in the finished run's folder: the fit goes on from the final
    checkpoint, and the first test phase's rows (logged after that checkpoint, in columns no earlier row uses) leave
    the CSV, which ends as the longer run's."""
    longer = train(make_cfg(*TINY, "trainer.max_epochs=3", fast=False, out=tmp_path / "a"))
    run = tmp_path / "b"
    train(make_cfg(*TINY, "trainer.max_epochs=2", fast=False, out=run))
    assert "test/elbo" in (run / "csv" / "metrics.csv").read_text()
    continued = train(make_cfg(*TINY, "trainer.max_epochs=3", "ckpt_path=last", fast=False, out=run))
    assert_same_run(continued, longer, run, tmp_path / "a")


def test_the_logging_cadence_of_a_resumed_run_is_the_uninterrupted_runs(make_cfg, tmp_path: Path) -> None:
    """Step rows every 3 batches of the whole fit: 4 batches an epoch, so the resumed epochs log at 6, 9, 12, 15,
    as the uninterrupted run does, not at 4, 7, ... counted from the resumed process's first batch."""
    cadence = "trainer.log_every_n_steps=3"
    longer = train(make_cfg(*TINY, cadence, "trainer.max_epochs=3", fast=False, out=tmp_path / "a"))
    run = tmp_path / "b"
    train(make_cfg(*TINY, cadence, "trainer.max_epochs=1", "test=false", fast=False, out=run))
    continued = train(make_cfg(*TINY, cadence, "trainer.max_epochs=3", "ckpt_path=last", fast=False, out=run))
    assert sorted(set(logged_steps(run))) == sorted(set(logged_steps(tmp_path / "a")))
    assert_same_run(continued, longer, run, tmp_path / "a")


def test_full_disk_leaves_the_previous_checkpoint_intact(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """The second epoch's last.ckpt write runs out of space halfway: the first epoch's file stays, byte for byte,
    no temporary file is left, and the run resumes from it to the uninterrupted run."""
    args = [*TINY, "trainer.max_epochs=3", "callbacks.model_checkpoint=null"]  # last.ckpt is the only file
    uninterrupted = train(make_cfg(*args, fast=False, out=tmp_path / "a"))
    run = tmp_path / "b"
    real_save = torch.save
    before: list[bytes] = []

    def full_disk(obj: object, f: io.BufferedWriter) -> None:
        if obj["global_step"] < 8:  # the first epoch's checkpoint is written
            real_save(obj, f)
            return
        before.append((run / LAST).read_bytes())
        data = io.BytesIO()
        real_save(obj, data)
        f.write(data.getvalue()[: data.tell() // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train(make_cfg(*args, fast=False, out=run))
    monkeypatch.undo()
    assert before and (run / LAST).read_bytes() == before[0]
    assert torch.load(run / LAST, weights_only=True)["global_step"] == 4
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    resumed = train(make_cfg(*args, "resume=true", fast=False, out=run))
    assert_same_run(resumed, uninterrupted, run, tmp_path / "a")


def default_folders() -> tuple[str, str]:
    """``hydra.run.dir`` and ``hydra.sweep.dir`` of a freshly composed config."""
    cfg = compose_cfg([], Path("unused"))
    return str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)


class FrozenClock(datetime.datetime):
    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> FrozenClock:
        return cls(2030, 1, 1, 12, 0, 0)


def test_default_run_folders_differ_between_processes_started_in_the_same_second(monkeypatch) -> None:
    """Two launches in the same second: different folders. One process resolves one suffix, in its run and sweep
    folders alike; a config shipped to a job process (submitit pickles it) keeps the launching process's folder."""
    monkeypatch.setattr(hydra.core.utils, "datetime", FrozenClock)  # Hydra's ${now:...}
    run, sweep = default_folders()
    suffix = run.rsplit("_", 1)[1]
    assert len(suffix) == 6 and run == f"outputs/train/2030-01-01_12-00-00_{suffix}"
    assert sweep == f"multirun/train/2030-01-01_12-00-00_{suffix}"
    assert default_folders() == (run, sweep)  # the same process: the same folders
    launched = compose_cfg([], Path("unused"))
    assert str(launched.hydra.sweep.dir) == sweep  # resolved by the launcher before it ships the config
    shipped = pickle.dumps(launched)
    run_dirs.process_uid.cache_clear()  # what another process starts with
    assert default_folders()[0] != run
    assert str(pickle.loads(shipped).hydra.sweep.dir) == sweep


def test_a_run_refuses_a_folder_that_holds_another_run(make_cfg, tmp_path: Path, monkeypatch, capsys) -> None:
    """Before Hydra writes into it: a finished run's folder, a folder with checkpoints, a sweep over finished jobs,
    ``vae-eval`` writing into a run's folder; resuming is allowed (``resume=true`` returns the finished run's
    metrics)."""
    finished = tmp_path / "finished"
    metrics = train(make_cfg(out=finished))
    config = finished / ".hydra" / "config.yaml"
    config.parent.mkdir()
    config.write_text("the finished run's config\n")
    status, err = launch(["trainer.max_epochs=1", f"hydra.run.dir={finished}"], monkeypatch, capsys)
    assert status == 2 and err.strip() == (
        f"error: {finished} holds a finished run (metrics.json): choose another hydra.run.dir, or pass resume=true "
        "(returns its metrics) or ckpt_path=last (trains it further)"
    )
    assert config.read_text() == "the finished run's config\n"
    best = next((finished / "checkpoints").glob("epoch_*.ckpt"))
    status, err = launch([f"ckpt_path={best}", f"hydra.run.dir={finished}"], monkeypatch, capsys, evaluate_mod.main)
    assert (
        status == 2
        and err.strip() == f"error: {finished} holds a finished run (metrics.json): choose another hydra.run.dir"
    )
    assert launch([f"hydra.run.dir={finished}", "resume=true"], monkeypatch, capsys)[0] == 0
    assert json.loads((finished / "metrics.json").read_text()) == json.loads(json.dumps(metrics))

    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    (finished / LAST).rename(killed / LAST)
    status, err = launch([f"hydra.run.dir={killed}"], monkeypatch, capsys)
    assert status == 2 and "holds another run's checkpoints (last.ckpt)" in err and "resume=true" in err

    sweep = tmp_path / "sweep"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / "metrics.json").write_text("{}")
    status, err = launch(["-m", "seed=0,1", f"hydra.sweep.dir={sweep}"], monkeypatch, capsys)
    assert status == 2 and f"error: {sweep / '0'} holds a finished run" in err and "hydra.sweep.dir" in err
    assert not (sweep / "1").exists()
