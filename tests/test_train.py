"""The runner end to end: what a run leaves behind, determinism, resume, vae-eval, and the one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vae_experiments.errors import ConfigError
from vae_experiments.evaluate import evaluate
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
    assert torch.load(ckpt, weights_only=False)["epoch"] == 0
    resumed = train(make_cfg("trainer.max_epochs=2", f"ckpt_path={ckpt}", out=tmp_path / "second"))
    assert resumed["train/epochs"] == 2
    assert resumed["train/steps"] == 6  # 3 batches per epoch: 3 from the checkpoint + 3 new


def test_vae_eval_reevaluates_with_more_samples(make_cfg, compose_config, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = make_cfg(out=run)
    train(cfg)
    (run / ".hydra").mkdir()  # what Hydra writes for a CLI run: the job config without the hydra node
    OmegaConf.save({k: v for k, v in cfg.items() if k != "hydra"}, run / ".hydra" / "config.yaml")
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
    assert result.returncode != 0
    assert "Could not find 'posterior/banana'" in result.stderr and "diagonal" in result.stderr
    assert "Traceback" not in result.stderr
