"""Sweeps (``-m``): a failing job leaves ``error.txt`` in its folder and the sweep goes on; a summary at the end.

A job whose overrides do not compose (``-m posterior=diagonal,no_such``) fails alone too: ``ComposesEachJob`` gives the
launcher, in its place, the sweep's own config (none of the job's overrides), marked with the composition error, and
``FailsUncomposedJobs`` (the task function the launcher runs) writes that error into the job's folder instead of
training. Both are installed by the sweepers in ``hydra_plugins/vae_experiments_sweepers``.
"""

from __future__ import annotations

import copy
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from vae_experiments.entry import hydra_error_line
from vae_experiments.errors import ConfigError
from vae_experiments.resume import METRICS
from vae_experiments.validation import one_line

log = logging.getLogger(__name__)

ERROR = "error.txt"
# key of the hydra node of a job whose overrides did not compose: the composition error, one line
COMPOSITION_ERROR = "composition_error"


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def clear_failure(cfg: DictConfig) -> None:
    """Forget a failure from an earlier launch into the same folder."""
    (Path(cfg.paths.output_dir) / ERROR).unlink(missing_ok=True)


def record_failure(cfg: DictConfig, exc: BaseException) -> None:
    """Write the job's error (one line for a ``ConfigError``, else the traceback) into its folder and log it."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = f"error: {exc}\n" if isinstance(exc, ConfigError) else traceback.format_exc()
    (out / ERROR).write_text(text)
    log.error("job %s failed: %s (details in %s)", out.name, one_line(exc), out / ERROR)


def job_overrides(job_dir: Path) -> str:
    path = job_dir / ".hydra" / "overrides.yaml"
    return " ".join(OmegaConf.load(path)) if path.is_file() else ""


def error_line(job_dir: Path) -> str:
    """The last non-empty line of the job's ``error.txt``: the ``error: ...`` line, or a traceback's exception."""
    lines = (job_dir / ERROR).read_text().splitlines()
    return next((line.strip() for line in lines[::-1] if line.strip()), "")


class ComposesEachJob:
    """Hydra's config loader, except that a job whose overrides fail to compose gets the sweep's own config, with
    ``hydra.overrides.task`` set to the job's overrides (so its folder says which job it is) and the one-line error
    under ``hydra.composition_error``, instead of raising and ending the whole sweep."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.loader, name)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        try:
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        except (HydraException, OmegaConfBaseException) as exc:
            # the launch's own config (composed without any job's overrides): composing it again with none of the
            # job's overrides could fail too, on a hydra override that needs one of them (hparams_search=optuna)
            config = copy.deepcopy(master_config)
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.overrides.task = list(sweep_overrides)
                config.hydra[COMPOSITION_ERROR] = hydra_error_line(exc)
            return config


class FailsUncomposedJobs:
    """The task function of a sweep: a job marked by ``ComposesEachJob`` writes its composition error into its folder
    and returns NaN, like a job whose config does not validate; every other job runs ``task_function``."""

    def __init__(self, task_function: TaskFunction) -> None:
        self.task_function = task_function

    def __call__(self, cfg: DictConfig) -> Any:
        error = HydraConfig.get().get(COMPOSITION_ERROR)
        if error is None:
            return self.task_function(cfg)
        record_failure(cfg, ConfigError(error))
        return float("nan")


def tolerant(hydra_context: HydraContext, task_function: TaskFunction) -> tuple[HydraContext, TaskFunction]:
    """The context and task function a sweeper hands its launcher so that one job's bad overrides fail that job only."""
    loader = ComposesEachJob(hydra_context.config_loader)
    return HydraContext(config_loader=loader, callbacks=hydra_context.callbacks), FailsUncomposedJobs(task_function)


class SweepSummary(Callback):
    """After a sweep (any launcher: the jobs' folders are read, not their return values), log how many jobs
    finished, were skipped (finished before this launch, ``resume=true``) and failed, and for each failed one its
    folder, its overrides and the last line of its error. A sweep none of whose jobs finished (or was skipped) exits
    with status 1."""

    def __init__(self) -> None:
        self.finished_before: set[str] = set()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.finished_before = {job.name for job in self.jobs(config) if (job / METRICS).is_file()}

    @staticmethod
    def jobs(config: DictConfig) -> list[Path]:
        sweep_dir = Path(config.hydra.sweep.dir)
        return sorted((p.parent for p in sweep_dir.glob("*/.hydra")), key=lambda p: p.name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = self.jobs(config)
        failed = [job for job in jobs if (job / ERROR).is_file()]
        finished = [job for job in jobs if job not in failed and (job / METRICS).is_file()]
        skipped = sum(job.name in self.finished_before for job in finished)
        log.info(
            "sweep %s: %d jobs, %d finished, %d skipped (finished before), %d failed",
            sweep_dir,
            len(jobs),
            len(finished) - skipped,
            skipped,
            len(failed),
        )
        for job in failed:
            log.error("FAILED %s [%s]: %s", job, job_overrides(job), error_line(job))
        if jobs and not finished:
            print(f"error: sweep {sweep_dir}: none of its {len(jobs)} jobs finished: see FAILED above", file=sys.stderr)
            sys.exit(1)
