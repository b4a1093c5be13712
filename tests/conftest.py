"""Shared fixtures: composed configs the way ``vae-train`` composes them, pointed at a temporary run folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from vae_experiments.train import CONFIG_DIR

# Small, fast runs: the suite has 2 cores and a 15-minute budget.
FAST = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=1",
    "eval.nll_samples=8",
    "eval.elbo_samples=8",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a test reads or fetches by the configured data folder lands in a temporary one: never the repository,
    never the user's cache (``paths.data_dir`` follows ``$VAE_DATA_DIR``)."""
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


def compose_cfg(overrides: list[str], out: Path, config_name: str = "train") -> DictConfig:
    """Compose like the CLI does, with the hydra node set, so ``${hydra:...}`` resolves; outputs go to ``out``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with read_write(cfg), open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides, fast=True)``: a train config whose outputs land in ``tmp_path``."""

    def _make(*overrides: str, fast: bool = True, out: Path | None = None) -> DictConfig:
        return compose_cfg([*(FAST if fast else []), *overrides], out or tmp_path)

    return _make


@pytest.fixture
def compose_config() -> Callable[..., DictConfig]:
    """``compose_config(overrides, out, config_name)``: any config of ``conf/``, outputs in ``out``."""
    return compose_cfg
