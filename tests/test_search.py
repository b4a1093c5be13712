"""Sweeps and searches through the real command line: a bad grid value fails only its jobs (both launchers), a sweep
with no finished job exits 1, a relaunch counts the jobs it skipped, wandb runs under ``-m``, and the Optuna search
records failed trials, stores each trial's run folder, continues a stored study with new points and runs the README's
commands as written."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from vae_experiments import search, sweep

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "eval.nll_samples=4",
    "eval.elbo_samples=2",
    "encoder.hidden=[16]",
    "decoder.hidden=[16]",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
]
NO_SUCH = "error: posterior=no_such is not an option of posterior: choose one of diagonal, iaf, rho\n"


def vae_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``vae-train ARGS`` as a fresh process (Hydra's sweepers and launchers, and its exit status)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "vae_experiments.train", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def summary(sweep_dir: Path, jobs: int, finished: int, skipped: int, failed: int) -> str:
    return f"sweep {sweep_dir}: {jobs} jobs, {finished} finished, {skipped} skipped (finished before), {failed} failed"


@pytest.mark.parametrize("launcher", ["basic", "parallel"])
def test_a_bad_grid_value_fails_only_its_jobs(tmp_path: Path, launcher: str) -> None:
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "posterior=diagonal,no_such", "seed=0", f"hydra.sweep.dir={sweep_dir}", *TINY]
    if launcher == "parallel":
        args += ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]
    result = vae_train(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(sweep_dir, 2, 1, 0, 1) in result.stdout
    assert f"FAILED {sweep_dir / '1'} [posterior=no_such seed=0 " in result.stdout
    assert (sweep_dir / "0" / "metrics.json").is_file()
    assert (sweep_dir / "1" / sweep.ERROR).read_text() == NO_SUCH
    assert sweep.job_overrides(sweep_dir / "1").startswith("posterior=no_such seed=0 ")
    assert not (sweep_dir / "1" / "metrics.json").exists()
    if launcher == "basic":  # a relaunch skips the finished job, counts it, and fails the bad one again
        result = vae_train([*args, "resume=true"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert summary(sweep_dir, 2, 0, 1, 1) in result.stdout


def test_a_sweep_with_no_finished_job_exits_1(tmp_path: Path) -> None:
    result = vae_train(["-m", "latent_dim=0", "seed=0,1", f"hydra.sweep.dir={tmp_path}", *TINY], tmp_path)
    assert result.returncode == 1
    assert summary(tmp_path, 2, 0, 0, 2) in result.stdout
    assert result.stderr.splitlines()[-1] == f"error: sweep {tmp_path}: none of its 2 jobs finished: see FAILED above"


def test_wandb_offline_under_multirun_groups_the_jobs_by_sweep(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "grid_7f3a"
    args = ["-m", "logger=wandb", "logger.wandb.offline=true", "objective=elbo,iwae", f"hydra.sweep.dir={sweep_dir}"]
    result = vae_train([*args, *TINY], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(sweep_dir, 2, 2, 0, 0) in result.stdout
    run_ids = [(sweep_dir / job / "wandb_run_id").read_text() for job in ("0", "1")]
    assert len(set(run_ids)) == 2
    for job, run_id in zip(("0", "1"), run_ids, strict=True):
        (record,) = (sweep_dir / job / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
        # the run record's run_group (protobuf field 6: tag 0x32, length, bytes) is the sweep folder's name
        assert bytes([0x32, len(sweep_dir.name)]) + sweep_dir.name.encode() in record.read_bytes()


def stored_study(storage: str, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["hparams_search=optuna", "latent_dim=choice(0,4)", "hydra.sweeper.n_trials=4"]
    args += [f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=s", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = vae_train([*args, *TINY], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = stored_study(storage).trials
    assert len(trials) == 4
    states = {t.params["latent_dim"]: set() for t in trials}
    for trial in trials:
        states[trial.params["latent_dim"]].add(trial.state)
        run_dir = Path(trial.user_attrs[search.RUN_DIR])
        assert run_dir.parent == tmp_path / "sweep"
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == json.loads((run_dir / "metrics.json").read_text())["test/nll"]
        else:
            assert "error: latent_dim=0 is not an integer >= 1" in (run_dir / sweep.ERROR).read_text()
    assert states == {0: {optuna.trial.TrialState.FAIL}, 4: {optuna.trial.TrialState.COMPLETE}}


def test_a_search_whose_trials_all_fail_exits_1(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["hparams_search=optuna", "posterior=choice(no_such)", "hydra.sweeper.n_trials=2"]
    args += [f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=s", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = vae_train([*args, *TINY], tmp_path)
    assert result.returncode == 1
    assert summary(tmp_path / "sweep", 2, 0, 0, 2) in result.stdout
    trials = stored_study(storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all((Path(t.user_attrs[search.RUN_DIR]) / sweep.ERROR).read_text() == NO_SUCH for t in trials)


def test_a_continued_study_proposes_new_points(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}"]
    for launch in range(2):
        result = vae_train(
            [*args, "hydra.sweeper.study_name=s", f"hydra.sweep.dir={tmp_path / str(launch)}", *TINY], tmp_path
        )
        assert result.returncode == 0, result.stderr[-3000:]
    trials = stored_study(storage).trials
    assert [Path(t.user_attrs[search.RUN_DIR]) for t in trials] == [
        tmp_path / "0" / "0",
        tmp_path / "0" / "1",
        tmp_path / "1" / "0",
        tmp_path / "1" / "1",
    ]
    first, second = ({t.params["objective.beta"] for t in trials[i : i + 2]} for i in (0, 2))
    assert len(first | second) == 4  # the same seed, yet the second launch does not repeat the first one's points


class FixedLauncher:
    """Returns the given job returns, one per trial."""

    def __init__(self, returns: list[JobReturn]) -> None:
        self.returns = returns

    def launch(self, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        return self.returns


def job_return(value: float, out: Path) -> JobReturn:
    ret = JobReturn(status=JobStatus.COMPLETED, _return_value=value)
    ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(out)}}})
    return ret


def test_trial_launcher_fails_a_non_finite_return_and_stores_run_folders(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / sweep.ERROR).write_text("Traceback ...\nFloatingPointError: the loss is nan\n")
    returns = [
        job_return(1.5, tmp_path / "0"),
        job_return(math.nan, tmp_path / "1"),
        job_return(math.inf, tmp_path / "2"),
    ]
    launcher = search.TrialLauncher(FixedLauncher(returns))
    study = optuna.create_study()
    launcher.trials = [study.ask() for _ in returns]
    launcher.launch([[], [], []], initial_job_idx=0)
    assert [t.user_attrs[search.RUN_DIR] for t in launcher.trials] == [str(tmp_path / n) for n in "012"]
    assert [r.status for r in returns] == [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.FAILED]
    assert returns[0].return_value == 1.5
    assert str(returns[1]._return_value) == f"trial 1 ({tmp_path / '1'}): FloatingPointError: the loss is nan"
    assert str(returns[2]._return_value) == f"trial 2 ({tmp_path / '2'}): the optimised metric is inf"
    assert (launcher.launched, launcher.completed) == (3, 1)


def readme_commands(section: str) -> list[list[str]]:
    """The shell commands of the README section titled ``section`` (up to the next heading)."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"### {section}\n", 1)[1].split("\n#", 1)[0]
    lines = [line for block in re.findall(r"```bash\n(.*?)```", body, re.S) for line in block.splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


@pytest.mark.slow  # six launches, each a fresh process (a minute and a half here)
def test_the_readme_search_commands_run_as_written(tmp_path: Path) -> None:
    commands = readme_commands("Hyper-parameter search (Optuna)")
    assert [c[0] for c in commands] == ["vae-train"] * 5 + ["python"]
    for i, command in enumerate(commands):
        if command[0] == "python":  # the stored study's best trial: its value and its run folder
            result = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr[-3000:]
            value, run_dir = result.stdout.split()
            assert float(value) == json.loads((Path(run_dir) / "metrics.json").read_text())["test/nll"]
            continue
        sweep_dir = tmp_path / str(i)
        result = vae_train([*command[1:], "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep_dir}", *TINY], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert summary(sweep_dir, 2, 2, 0, 0) in result.stdout
