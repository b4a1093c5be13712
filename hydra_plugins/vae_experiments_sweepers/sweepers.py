"""Hydra's grid sweeper and the Optuna sweeper, with one job's bad overrides failing that job only
(``vae_experiments.sweep.tolerant``); the Optuna one also records failed trials and continues stored studies
(``vae_experiments.search``). Light imports at module level: Hydra imports every plugin module at start-up."""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig


class GridSweeper(BasicSweeper):
    """``-m a=1,2 b=x,y``: Hydra's basic sweeper (every combination, in batches to the launcher)."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from vae_experiments.sweep import tolerant

        context, task = tolerant(hydra_context, task_function)
        super().setup(hydra_context=context, task_function=task, config=config)


class OptunaSearch(OptunaSweeper):
    """``hparams_search=optuna``: the plugin's sweeper with ``vae_experiments.search.Search`` as its implementation."""

    def __init__(self, **kwargs: Any) -> None:
        from vae_experiments.search import Search

        self.sweeper = Search(**kwargs)
