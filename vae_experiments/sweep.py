"""Sweeps (``-m``): a failing job leaves ``error.txt`` in its folder and the sweep goes on; a summary at the end."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from vae_experiments.errors import ConfigError
from vae_experiments.resume import METRICS
from vae_experiments.validation import one_line

log = logging.getLogger(__name__)

ERROR = "error.txt"


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


class SweepSummary(Callback):
    """After a sweep (any launcher: the jobs' folders are read, not their return values), log how many jobs
    finished and, for each failed one, its folder, its overrides and the first line of its error."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted((p.parent for p in sweep_dir.glob("*/.hydra")), key=lambda p: p.name)
        failed = [job for job in jobs if (job / ERROR).is_file()]
        done = sum((job / METRICS).is_file() for job in jobs if job not in failed)
        log.info("sweep %s: %d jobs, %d finished, %d failed", sweep_dir, len(jobs), done, len(failed))
        for job in failed:
            cause = next((line for line in (job / ERROR).read_text().splitlines()[::-1] if line.strip()), "")
            log.error("FAILED %s [%s]: %s", job, job_overrides(job), cause.strip())
