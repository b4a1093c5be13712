"""Experiments at scale: grids with per-job failures, Optuna studies, submitit, DDP on the CPU, wandb offline,
exact resume after SIGKILL, schedules in training and validation logs, and the sweep aggregator."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from conftest import compose_cfg
from hydra.core.global_hydra import GlobalHydra
from omegaconf import read_write

from vae_experiments import evaluate as evaluate_mod
from vae_experiments import schedules, sweep, tracking
from vae_experiments import train as train_mod
from vae_experiments.train import train

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=3",
    "eval.nll_samples=8",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "callbacks.image_grids.every_n_epochs=1",
]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``vae-train ARGS`` in this process (Hydra's launchers and sweepers included)."""
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["vae-train", *args])
    try:
        train_mod.main()
    finally:
        GlobalHydra.instance().clear()


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "2", "WANDB_MODE": "offline"}


def run_subprocess(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vae_experiments.train", *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real grid: two objectives x two seeds that run, and two jobs that fail (latent_dim=0)."""
    out = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as mp:
        run_cli(["-m", "objective=elbo,iwae", "seed=0,1", "latent_dim=4,0", f"hydra.sweep.dir={out}", *TINY], mp)
    return out


def test_grid_runs_every_job_and_reports_failures(grid: Path, monkeypatch, capfd) -> None:
    jobs = sorted(grid.glob("*/.hydra"))
    assert len(jobs) == 8 and len({j.parent for j in jobs}) == 8
    finished = sorted(p.parent.name for p in grid.glob("*/metrics.json"))
    failed = sorted(p.parent.name for p in grid.glob(f"*/{sweep.ERROR}"))
    assert len(finished) == 4 and len(failed) == 4 and not set(finished) & set(failed)
    for name in failed:
        assert "latent_dim=0" in sweep.job_overrides(grid / name)
        assert "latent_dim=0 is not an integer >= 1" in (grid / name / sweep.ERROR).read_text()
    # a re-launch with resume=true skips the finished jobs (their metrics.json stays as it was)
    stamps = {name: (grid / name / "metrics.json").stat().st_mtime_ns for name in finished}
    capfd.readouterr()
    run_cli(
        ["-m", "objective=elbo,iwae", "seed=0,1", "latent_dim=4,0", f"hydra.sweep.dir={grid}", "resume=true", *TINY],
        monkeypatch,
    )
    assert stamps == {name: (grid / name / "metrics.json").stat().st_mtime_ns for name in finished}
    log = "".join(capfd.readouterr())
    assert "8 jobs, 0 finished, 4 skipped (finished before), 4 failed" in log and log.count("FAILED") == 4


def test_single_run_config_error_exits_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli(["latent_dim=0", f"hydra.run.dir={tmp_path}", *TINY], monkeypatch)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: latent_dim=0 is not an integer >= 1")


def test_aggregate_tables_and_plots(grid: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("aggregate", ROOT / "scripts" / "aggregate.py")
    aggregate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(aggregate)
    aggregate.main([str(grid), "--out", str(tmp_path)])
    table = read_csv(tmp_path / "results.csv")
    assert list(table[0])[:4] == ["latent_dim", "objective", "finished", "failed"]  # seed is averaged over
    ok = {row["objective"]: row for row in table if row["latent_dim"] == "4"}
    assert [(r["finished"], r["failed"]) for r in ok.values()] == [("2", "0"), ("2", "0")]
    nll = [
        json.loads(p.read_text())["test/nll"]
        for p in sorted(grid.glob("*/metrics.json"))
        if "objective=elbo" in sweep.job_overrides(p.parent)
    ]
    assert float(ok["elbo"]["test/nll_mean"]) == pytest.approx(sum(nll) / 2)
    assert all(row["failed"] == "2" for row in table if row["latent_dim"] == "0")
    assert "± " in (tmp_path / "results.md").read_text()
    assert (tmp_path / "metric_test_nll.png").stat().st_size > 0
    assert (tmp_path / "curve_val_elbo.png").stat().st_size > 0


def test_optuna_study_is_stored_and_continued(tmp_path: Path, monkeypatch) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for launch in range(2):
        run_cli(
            [
                "hparams_search=optuna",
                "hydra.sweeper.n_trials=2",
                f"hydra.sweeper.storage={storage}",
                "hydra.sweeper.study_name=t",
                f"hydra.sweep.dir={tmp_path / str(launch)}",
                *TINY,
            ],
            monkeypatch,
        )
    study = optuna.load_study(study_name="t", storage=storage)
    assert len(study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    stored = sorted(json.loads(p.read_text())["test/nll"] for p in tmp_path.glob("*/*/metrics.json"))
    assert sorted(t.value for t in study.trials) == pytest.approx(stored)
    assert set(study.trials[0].params) == {"optimizer.lr", "latent_dim", "objective.beta"}


@pytest.mark.slow  # each job is a fresh Python process (about a minute here); the task function is the grid's
def test_submitit_local_runs_jobs_as_processes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    run_cli(
        ["-m", "hydra/launcher=submitit_local", "latent_dim=4,0", f"hydra.sweep.dir={tmp_path}", *TINY], monkeypatch
    )
    assert (tmp_path / "0" / "metrics.json").is_file()
    assert "latent_dim=0 is not an integer >= 1" in (tmp_path / "1" / sweep.ERROR).read_text()
    assert any((tmp_path / ".submitit").iterdir())


def test_slurm_launcher_config(make_cfg) -> None:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    cfg = make_cfg("hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=64")
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    assert isinstance(launcher, SlurmLauncher)
    assert launcher.params["partition"] == "gpu" and launcher.params["mem_gb"] == 64
    assert {"timeout_min", "gpus_per_node", "cpus_per_task", "tasks_per_node"} <= set(launcher.params)


def test_ddp_on_cpu_writes_once_and_evaluates_exactly(tmp_path: Path, make_cfg) -> None:
    run = tmp_path / "ddp"
    # 251 test examples: a padding DistributedSampler would count one twice
    args = [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "dataset.test_size=251",
        f"hydra.run.dir={run}",
        *TINY,
    ]
    result = run_subprocess(args)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = json.loads((run / "metrics.json").read_text())
    assert sorted(p.name for p in run.glob("*.png")) == ["reconstructions.png", "samples.png", "samples_drawn.png"]
    assert (run / "checkpoints" / "last.ckpt").is_file() and not list(run.glob("*rank*"))
    # the same weights and data, tested in one process
    overrides = "['trainer.devices=1','trainer.strategy=auto','trainer.enable_progress_bar=false']"
    cfg = compose_cfg(
        [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "eval.nll_samples=8", f"overrides={overrides}"],
        tmp_path / "single",
        config_name="eval",
    )
    single = evaluate_mod.evaluate(cfg)
    assert ddp["test/kl"] == pytest.approx(single["test/kl"], rel=1e-5)  # deterministic given the weights
    assert ddp["test/active_units"] == single["test/active_units"]
    assert ddp["test/kl_per_dim"] == pytest.approx(single["test/kl_per_dim"], rel=1e-4, abs=1e-6)
    # one posterior sample per example: equal up to Monte-Carlo noise
    assert ddp["test/elbo"] == pytest.approx(single["test/elbo"], abs=1.0)


def test_missing_last_checkpoint_is_a_config_error(make_cfg) -> None:
    with pytest.raises(train_mod.ConfigError, match="ckpt_path=last"):
        train(make_cfg("ckpt_path=last"))


def test_wandb_offline_group_images_and_resume(tmp_path: Path, make_cfg, monkeypatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    calls = []
    real_init = wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(kw) or real_init(**kw))
    wandb_args = [
        "logger=wandb",
        "logger.wandb.offline=true",
        "logger.wandb.project=p",
        "logger.wandb.group=g",
        "tags=[a,b]",
        "logger.wandb.job_type=search",
    ]
    run = tmp_path / "run"
    train(make_cfg(*wandb_args, "callbacks.image_grids.every_n_epochs=1", out=run))
    run_id = (run / tracking.RUN_ID).read_text()
    first = calls[-1]
    assert (first["id"], first["resume"], first["project"], first["group"], first["job_type"]) == (
        run_id,
        "allow",
        "p",
        "g",
        "search",
    )
    assert list(first["tags"]) == ["a", "b"]
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert offline and list((offline[0] / "files" / "media").rglob("*.png"))
    train(make_cfg(*wandb_args, "trainer.max_epochs=2", "ckpt_path=last", out=run))  # a 2nd epoch, same run
    assert calls[-1]["id"] == run_id and wandb.run is None


def test_wandb_group_defaults_to_the_sweep_folder(make_cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    cfg = make_cfg("logger=wandb", "hydra.sweep.dir=multirun/train/2030-01-01_00-00-00")
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    assert tracking.wandb_node(cfg, cfg.logger.wandb, None).group == "2030-01-01_00-00-00"


@pytest.mark.parametrize("name", ["linear", "cosine", "cyclic"])
def test_schedule_composes_for_any_weight(make_cfg, name: str) -> None:
    cfg = make_cfg(f"+schedule@objective.free_bits={name}", "objective.free_bits.end=0.5")
    objective = hydra.utils.instantiate(cfg.objective)
    assert isinstance(objective._schedules["free_bits"], schedules.Linear | schedules.Cyclic)
    objective.set_step(0)
    assert float(objective.free_bits) == 0.0
    objective.set_step(10**6 - 1)
    assert float(objective.free_bits) == pytest.approx(0.5, abs=1e-2)


def test_schedule_same_in_training_and_validation_logs(tmp_path: Path, make_cfg) -> None:
    cfg = make_cfg(
        "+schedule@objective.beta=linear",
        "objective.beta.end=4",
        "objective.beta.steps=5",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "callbacks.image_grids=null",
    )
    train(cfg)
    beta = schedules.Linear(0.0, 4.0, 5)
    log = read_csv(tmp_path / "csv" / "metrics.csv")
    steps = [(int(r["step"]), float(r["train/beta_step"])) for r in log if r["train/beta_step"]]
    assert len(steps) == 6 and all(b == pytest.approx(beta(s)) for s, b in steps)
    val = [{k: float(r[k]) for k in ("val/beta", "val/loss", "val/recon", "val/kl")} for r in log if r["val/beta"]]
    # validation after epoch e runs at global step 3 (e + 1): the weight the next training step would use
    assert [v["val/beta"] for v in val] == pytest.approx([beta(3), beta(6)])
    for v in val:  # the same weight in the validation loss (its reconstruction term is its own one-sample draw)
        assert v["val/loss"] == pytest.approx(v["val/recon"] + v["val/beta"] * v["val/kl"], abs=2.0)
