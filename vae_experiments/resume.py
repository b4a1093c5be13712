"""Resuming a run: ``ckpt_path=last`` and ``resume=true`` find the run folder's own last checkpoint.

``resume=true`` also makes a finished run (its folder holds ``metrics.json``) return its stored metrics instead of
training again, so a re-launched sweep with the same ``hydra.sweep.dir`` only runs the jobs that did not finish.

A job of a submitit launcher (``hydra/launcher=submitit_slurm``, ``submitit_local``) always resumes so: submitit
requeues a pre-empted or timed-out job by running its call again, with the same config, and that run must continue
from the job folder's ``last.ckpt`` (the end of its last finished epoch, or of its fit when stopped while testing)
instead of training from scratch. A checkpoint there is the job's own: at launch, ``RunFolderGuard`` refused job
folders that held another run's files unless the sweep was launched with ``resume=true``.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from vae_experiments.errors import ConfigError

log = logging.getLogger(__name__)

# the file ``callbacks.last_checkpoint.LastCheckpoint`` writes (named here: the entry points read it without Lightning)
LAST_NAME = "last.ckpt"
LAST = Path("checkpoints") / LAST_NAME
METRICS = "metrics.json"
SUBMITIT_LAUNCHERS = "hydra_plugins.hydra_submitit_launcher."


def checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: with ``resume=true`` the run folder's last checkpoint when there is one (the
    folder's run goes on, whatever checkpoint it started from), else ``ckpt_path`` (``last`` = this run folder's);
    ``None`` starts afresh."""
    out = Path(cfg.paths.output_dir)
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        if not (out / LAST).is_file():
            raise ConfigError(
                f"ckpt_path=last but {out / LAST} does not exist: point hydra.run.dir at the run folder to resume"
            )
        return str(out / LAST)
    if resumes(cfg) and (out / LAST).is_file():
        log.info("resuming from %s", out / LAST)
        return str(out / LAST)
    if ckpt:
        if not Path(ckpt).is_file():
            raise ConfigError(f"checkpoint {ckpt} not found: pass ckpt_path=RUN/checkpoints/last.ckpt or last")
        return str(ckpt)
    return None


def resumes(cfg: DictConfig) -> bool:
    """``resume=true``, or a job that a submitit launcher runs (a requeued job runs its config again)."""
    if cfg.get("resume"):
        return True
    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    return hydra_cfg.mode == RunMode.MULTIRUN and launcher.startswith(SUBMITIT_LAUNCHERS)


def command(cfg: DictConfig) -> str:
    """The command that resumes this run in its folder: ``vae-train``, the run's own overrides, ``resume=true`` and
    ``hydra.run.dir=<its folder>`` (a job of a sweep resumes alone, as a single run)."""
    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [o for o in given if o.lstrip("+~").split("=", 1)[0] not in ("resume", "hydra.run.dir")]
    return shlex.join(["vae-train", *kept, "resume=true", f"hydra.run.dir={cfg.paths.output_dir}"])


def finished(cfg: DictConfig) -> dict[str, Any] | None:
    """When resuming (``resumes``), the stored final metrics of a run that already finished in this folder, else
    ``None``."""
    path = Path(cfg.paths.output_dir) / METRICS
    if not resumes(cfg) or not path.is_file():
        return None
    log.info("skipping: %s already holds this run's final metrics", path)
    return json.loads(path.read_text())
