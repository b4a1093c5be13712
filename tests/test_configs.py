"""Every option of every config group composes, and every experiment runs a few batches end to end (debug=fast)."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
from omegaconf import open_dict

from vae_experiments.errors import ConfigError
from vae_experiments.train import CONFIG_DIR, train

CONF = Path(CONFIG_DIR)
PART_GROUPS = ("dataset", "encoder", "posterior", "prior", "decoder", "likelihood", "objective", "optimizer")
OTHER_GROUPS = ("trainer", "logger", "callbacks", "debug")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [f"{g}={o}" for g in (*PART_GROUPS, *OTHER_GROUPS) for o in options(g)]
    + [f"+schedule@objective.beta={o}" for o in options("schedule")],
)
def test_every_option_composes(override: str, compose_config, tmp_path: Path) -> None:
    cfg = compose_config([override], tmp_path)
    group, name = override.split("=")
    if group in PART_GROUPS:  # a part is a constructor call
        assert "_target_" in cfg[group]
    elif group == "debug":  # a real run, cut short: loggers and checkpoints stay (fast_dev_run drops them)
        assert "fast_dev_run" not in cfg.trainer and cfg.trainer.max_epochs == 1
        assert cfg.trainer.limit_train_batches == 2
        assert cfg.trainer.limit_val_batches == cfg.trainer.limit_test_batches == 1
        assert cfg.eval.nll_samples == cfg.eval.elbo_samples == 4 and cfg.callbacks.image_grids.n == 4
        assert cfg.dataset.batch_size == cfg.dataset.eval_batch_size == 4
        assert not compose_config([override, "callbacks=none"], tmp_path).callbacks  # adds no callback node
    elif group.startswith("+schedule"):
        assert cfg.objective.beta._target_.endswith(name.capitalize())


def test_schedule_option_instantiates_into_the_objective(compose_config, tmp_path: Path) -> None:
    cfg = compose_config(
        ["+schedule@objective.beta=linear", "objective.beta.end=4", "objective.beta.steps=10"], tmp_path
    )
    objective = hydra.utils.instantiate(cfg.objective)
    objective.set_step(5)
    assert float(objective.beta) == pytest.approx(2.0)


def _offline_dataset(cfg) -> None:
    """Data this machine lacks (CIFAR-10, CelebA) are replaced by synthetic images of the same shape."""
    datamodule = hydra.utils.instantiate(cfg.dataset)
    try:
        datamodule.require_files()
    except ConfigError:
        shape = list(datamodule.data_shape)
        with open_dict(cfg):
            cfg.dataset = {
                "_target_": "vae_experiments.data.Synthetic.datamodule",
                "shape": shape,
                "n_train": 8,
                "val_size": 4,
                "n_test": 4,
                "batch_size": 2,
            }


@pytest.mark.parametrize("experiment", [None, *options("experiment")])
def test_every_experiment_runs_one_batch(experiment: str | None, compose_config, tmp_path: Path) -> None:
    overrides = ["debug=fast", "callbacks.progress_bar=null", "logger=csv"]
    if experiment:
        overrides.append(f"experiment={experiment}")
    cfg = compose_config(overrides, tmp_path)
    _offline_dataset(cfg)
    metrics = train(cfg)
    assert "test/elbo" in metrics and math.isfinite(metrics["test/elbo"])  # present, not NaN, not +-inf
