"""What the loggers hold: TensorBoard beside the CSV with HPARAMS, wandb's summary, every scheduled value."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from vae_experiments.train import train


def numeric(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


def test_tensorboard_runs_beside_csv_with_config_and_final_metrics_in_hparams(make_cfg, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    metrics = train(make_cfg("logger=tensorboard", "seed=3", "latent_dim=4"))
    assert (tmp_path / "csv" / "metrics.csv").is_file()  # scripts/aggregate.py reads this one
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.EXPERIMENT_TAG]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG]).session_start_info
    final = numeric(json.loads((tmp_path / "metrics.json").read_text()))
    assert final == numeric(metrics) and {"test/elbo", "test/nll", "val/elbo", "train/steps"} <= set(final)
    assert {info.name.tag for info in experiment.metric_infos} == set(final)
    for key, value in final.items():  # the HPARAMS tab shows each metric's last scalar
        assert events.Scalars(key)[-1].value == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert start.hparams["config/seed"].number_value == 3
    assert start.hparams["config/latent_dim"].number_value == 4
    assert start.hparams["config/objective/_target_"].string_value == "vae_experiments.objectives.elbo.ELBO"
    assert start.hparams["parameters"].number_value > 0
    assert start.hparams["kl_estimator"].string_value == "analytic"


def test_logger_many_runs_offline_without_a_login_and_wandb_summary_holds_metrics_json(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    import wandb

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # no settings or key from this machine
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    summaries = []
    real_finish = wandb.finish
    # an offline run's summary lives in its binary transaction log: read it from the live run as it closes
    monkeypatch.setattr(wandb, "finish", lambda: summaries.append(dict(wandb.run.summary)) or real_finish())
    metrics = train(make_cfg("logger=many"))
    assert (tmp_path / "csv" / "metrics.csv").is_file() and list((tmp_path / "tensorboard").glob("events.*"))
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored == metrics and {"test/kl_per_dim", "kl_estimator", "test/valid_bound"} <= set(stored)
    (summary,) = summaries
    for key, value in stored.items():
        assert summary[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_a_scheduled_free_bits_is_logged_at_every_step(make_cfg, tmp_path: Path) -> None:
    """free_bits follows Linear(0 -> 2 over 4 steps) = 0.5 * step; the ELBO objective logs beta itself, not
    free_bits: the runner logs every schedule."""
    train(
        make_cfg(
            "+schedule@objective.free_bits=linear",
            "objective.free_bits.end=2",
            "objective.free_bits.steps=4",
            "trainer.log_every_n_steps=1",
            "trainer.max_epochs=2",
            "test=false",
        )
    )
    with (tmp_path / "csv" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [(int(r["step"]), float(r["train/free_bits_step"])) for r in rows if r.get("train/free_bits_step")]
    assert steps == [(s, min(0.5 * s, 2.0)) for s in range(6)]
    epochs = [float(r["train/free_bits"]) for r in rows if r.get("train/free_bits")]
    assert epochs == pytest.approx([(0 + 0.5 + 1) / 3, (1.5 + 2 + 2) / 3])  # the epoch means
