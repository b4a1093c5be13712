"""The runner end to end: what a run leaves behind, determinism, resume, vae-eval, and the one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from process_helpers import RandomProjection

from vae_experiments.errors import ConfigError
from vae_experiments.evaluate import evaluate
from vae_experiments.metrics import evaluations
from vae_experiments.train import CONFIG_DIR, train

REPO = Path(CONFIG_DIR).parent


def test_run_leaves_metrics_checkpoint_images_and_logs(make_cfg, tmp_path: Path) -> None:
    metrics = train(make_cfg("callbacks.image_grids.every_n_epochs=1"))
    files = ("metrics.json", "samples.png", "samples_drawn.png", "reconstructions.png", "checkpoints/last.ckpt")
    for name in (*files, "csv/metrics.csv"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("test/elbo", "test/nll", "test/bpd", "test/kl", "test/recon", "test/active_units", "val/elbo"):
        assert key in saved, key
    # the NLL is a tighter bound than the ELBO on average, and bits/dim is the NLL in bits per pixel
    assert saved["test/nll"] <= -saved["test/elbo"] + 1.0
    assert saved["test/bpd"] == pytest.approx(saved["test/nll"] / (64 * 0.6931471805599453), rel=1e-5)
    assert len(saved["test/kl_per_dim"]) == 16
    assert sum(saved["test/kl_per_dim"]) == pytest.approx(saved["test/kl"], rel=1e-4)


def test_same_seed_same_metrics(make_cfg, tmp_path: Path) -> None:
    a = train(make_cfg("seed=3", out=tmp_path / "a"))
    b = train(make_cfg("seed=3", out=tmp_path / "b"))
    c = train(make_cfg("seed=4", out=tmp_path / "c"))
    drop = ("train/images_per_sec",)
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
    assert a["test/elbo"] != c["test/elbo"]


def test_resume_continues_from_checkpoint(make_cfg, tmp_path: Path) -> None:
    first = make_cfg("trainer.max_epochs=1", out=tmp_path / "first")
    train(first)
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3  # the final state: one epoch of 3 batches
    resumed = train(make_cfg("trainer.max_epochs=2", f"ckpt_path={ckpt}", out=tmp_path / "second"))
    assert resumed["train/epochs"] == 2
    assert resumed["train/steps"] == 6  # 3 batches per epoch: 3 from the checkpoint + 3 new


def save_run_config(cfg: DictConfig, run: Path) -> None:
    """What Hydra writes for a CLI run: the job config without the hydra node (``vae-eval`` reads it)."""
    (run / ".hydra").mkdir()
    OmegaConf.save({k: v for k, v in cfg.items() if k != "hydra"}, run / ".hydra" / "config.yaml")


TOY2D = [
    "dataset=toy2d",
    "likelihood=gaussian",
    "dataset.n_train=1000",
    "dataset.val_size=100",
    "dataset.n_test=300",
    "eval.toy2d.n_samples=300",
    "eval.toy2d.grid_points=32",
]


FID = ["eval.fid.enabled=true", "eval.fid.n=64", "eval.fid.batch_size=32"]


@pytest.mark.parametrize(
    "setup", [[], ["callbacks=ema"], TOY2D, FID], ids=["default", "ema", "toy2d-evaluations", "fid-evaluation"]
)
def test_vae_eval_on_last_checkpoint_reproduces_the_test_metrics(
    make_cfg, compose_config, tmp_path: Path, monkeypatch, setup: list[str]
) -> None:
    """``last.ckpt`` is the state after the final step, and ``vae-eval`` on it (the run's seed and eval settings)
    gives every ``test/*`` value of the run exactly, the extra evaluations' included (the 2-D toy metrics; FID, whose
    samples follow the image grids ``vae-train`` draws after testing). ``mode=min`` makes the best file an early
    epoch's, which a ``last.ckpt`` that followed the best file would be too; a scheduled beta makes ``test/loss``
    depend on the step the weights are tested at; with EMA the tested weights are the averaged ones, copied in after
    the last step."""
    monkeypatch.setenv("VAE_EXPERIMENTS_CACHE", str(tmp_path / "train_cache"))  # FID's reference statistics
    monkeypatch.setattr(evaluations, "load_inception", lambda weights, device: RandomProjection(64))
    run = tmp_path / "run"
    cfg = make_cfg(
        *setup,
        "callbacks.progress_bar=null",
        "callbacks.model_checkpoint.mode=min",
        "trainer.max_epochs=3",
        "+schedule@objective.beta=linear",
        "objective.beta.steps=20",
        "eval.elbo_samples=4",
        "seed=5",
        out=run,
    )
    metrics = train(cfg)
    save_run_config(cfg, run)
    last = run / "checkpoints" / "last.ckpt"
    steps = metrics["train/steps"]
    assert metrics["train/epochs"] == 3 and torch.load(last, weights_only=True)["global_step"] == steps
    best = list((run / "checkpoints").glob("epoch_*.ckpt"))
    assert len(best) == 1 and torch.load(best[0], weights_only=True)["global_step"] < steps  # kept beside last.ckpt
    monkeypatch.setenv("VAE_EXPERIMENTS_CACHE", str(tmp_path / "eval_cache"))  # computed again, not read
    eval_cfg = compose_config(
        [f"ckpt_path={last}", "eval.nll_samples=8", "eval.elbo_samples=4"], tmp_path / "e", "eval"
    )
    again = evaluate(eval_cfg)
    tested = sorted(k for k in metrics if k.startswith("test/"))
    assert tested == sorted(k for k in again if k.startswith("test/")) and "test/loss" in tested
    assert {k: again[k] for k in tested} == {k: metrics[k] for k in tested}
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["checkpoint"] == str(last.resolve())


def test_vae_eval_reevaluates_with_more_samples(make_cfg, compose_config, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = make_cfg(out=run)
    train(cfg)
    save_run_config(cfg, run)
    eval_cfg = compose_config(
        [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "eval.nll_samples=32"], tmp_path / "eval", "eval"
    )
    metrics = evaluate(eval_cfg)
    assert metrics["test/nll_samples"] == 32
    assert (tmp_path / "eval" / "metrics.json").is_file()


def run_cli(*overrides: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": ""}
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(
        [sys.executable, "-m", "vae_experiments.train", f"hydra.run.dir={tmp_path}", *overrides],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["dataset=synthetic", "dataset.shape=[3,8,8]"], "a Bernoulli needs binary data"),
        (["latent_dim=0"], "latent_dim must be >= 1"),
        (["objective=iwae", "objective.k=0"], "objective.k must be >= 1"),
        (["dataset=toy2d", "encoder=conv"], "encoder=conv needs images"),
        (["likelihood=gaussian", "likelihood.sigma=wide"], "likelihood.sigma must be"),
        (
            ["dataset=synthetic", "likelihood=discretized_logistic", "dataset.binarize=none", "+dataset.shape=[2,8,8]"],
            "channels",
        ),
    ],
    ids=["bernoulli-rgb", "latent-dim", "iwae-k", "conv-on-vectors", "bad-sigma", "logistic-2-channels"],
)
def test_bad_config_is_one_line_config_error(make_cfg, overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        train(make_cfg(*overrides))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_cli_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = run_cli("dataset=cifar10", "encoder=conv", tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "CIFAR-10 not found" in errors[0] and "dataset.download=true" in errors[0]
    assert "Traceback" not in result.stderr


def test_unknown_option_names_the_choices(tmp_path: Path) -> None:
    result = run_cli("posterior=banana", tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: posterior=banana is not an option of posterior: choose one of diagonal, iaf, rho\n"
