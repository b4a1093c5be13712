"""The Optuna search (``hparams_search=optuna``): hydra-optuna-sweeper's sweeper with three changes.

The plugin's sweep loop is kept; what it lacks is added around it (the loop is one long method, so a subclass that
wraps its launcher and its sampler stays small where a copy of the loop would not):

* a trial whose job failed (its ``error.txt``) or whose optimised metric is not finite (a diverged run) is told to
  Optuna as ``FAIL`` and the search goes on to its ``n_trials`` (the plugin would tell ``COMPLETE`` with NaN, which
  Optuna turns into ``FAIL`` and then refuses the plugin's own ``FAIL``);
* each trial stores its run folder as the user attribute ``run_dir`` (``study.best_trial.user_attrs["run_dir"]``);
* a launch that continues a stored study seeds its sampler with ``seed + number of trials already stored``, so it
  proposes new points instead of the first launch's again.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from omegaconf import DictConfig
from optuna.trial import Trial

from vae_experiments.sweep import ERROR, error_line, tolerant

log = logging.getLogger(__name__)

RUN_DIR = "run_dir"


class TrialFailed(RuntimeError):
    """A trial's job failed or returned a non-finite value."""


def stored_trials(storage: Any, study_name: str | None) -> int:
    """How many trials the stored study ``study_name`` holds (0 in memory or when there is no such study)."""
    if storage is None or study_name is None:
        return 0
    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # optuna 2.x: no study of that name yet
        return 0


class TrialLauncher:
    """The search's launcher: runs a batch of trials, then stores each trial's run folder on it and turns a job that
    returned a non-finite value into a failed job, which the plugin tells Optuna as ``FAIL``."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.trials: Sequence[Trial] = ()
        self.launched = 0
        self.completed = 0

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        for trial, ret in zip(self.trials, returns, strict=True):
            out = Path(ret.hydra_cfg.hydra.runtime.output_dir)
            trial.set_user_attr(RUN_DIR, str(out))
            value = ret.return_value if ret.status == JobStatus.COMPLETED else None
            if isinstance(value, float) and not math.isfinite(value):
                cause = error_line(out) if (out / ERROR).is_file() else f"the optimised metric is {value}"
                ret.status = JobStatus.FAILED
                ret.return_value = TrialFailed(f"trial {trial.number} ({out}): {cause}")
            self.completed += ret.status == JobStatus.COMPLETED
        self.launched += len(returns)
        return returns


class Search(OptunaSweeperImpl):
    """``OptunaSweeperImpl`` with failed trials told as failed, each trial's run folder stored on it, and a continued
    study's sampler seeded anew (the module docstring says why)."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        context, task = tolerant(hydra_context, task_function)
        super().setup(hydra_context=context, task_function=task, config=config)
        self.launcher = TrialLauncher(self.launcher)

    def _configure_trials(self, trials: list[Trial], *args: Any, **kwargs: Any) -> Sequence[Sequence[str]]:
        self.launcher.trials = trials
        return super()._configure_trials(trials, *args, **kwargs)

    def sweep(self, arguments: list[str]) -> None:
        # the sampler comes as a partial (``_partial_: true``) so that its seed can depend on the stored study
        if isinstance(self.sampler, functools.partial) and self.sampler.func is not optuna.samplers.GridSampler:
            seed = self.sampler.keywords.get("seed")
            if seed is not None:
                seed += stored_trials(self.storage, self.study_name)
            self.sampler = self.sampler(seed=seed)
        try:
            super().sweep(arguments)
        except ValueError:
            # after its n_trials the plugin asks the study for its best trial, which fails when no trial completed; the
            # sweep summary then lists the failures and exits non-zero
            if self.launcher.launched < self.n_trials or self.launcher.completed:
                raise
            log.error("none of the %d trials completed", self.launcher.launched)
