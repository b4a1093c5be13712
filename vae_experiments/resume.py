"""Resuming a run: ``ckpt_path=last`` and ``resume=true`` find the run folder's own last checkpoint.

``resume=true`` also makes a finished run (its folder holds ``metrics.json``) return its stored metrics instead of
training again, so a re-launched sweep with the same ``hydra.sweep.dir`` only runs the jobs that did not finish.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vae_experiments.errors import ConfigError

log = logging.getLogger(__name__)

LAST = Path("checkpoints") / "last.ckpt"
METRICS = "metrics.json"


def checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from: ``ckpt_path`` (``last`` = this run folder's), or with ``resume=true`` the run
    folder's last checkpoint when there is one; ``None`` starts afresh."""
    out = Path(cfg.paths.output_dir)
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        if not (out / LAST).is_file():
            raise ConfigError(
                f"ckpt_path=last but {out / LAST} does not exist: point hydra.run.dir at the run folder to resume"
            )
        return str(out / LAST)
    if ckpt:
        if not Path(ckpt).is_file():
            raise ConfigError(f"checkpoint {ckpt} not found: pass ckpt_path=RUN/checkpoints/last.ckpt or last")
        return str(ckpt)
    if cfg.get("resume") and (out / LAST).is_file():
        log.info("resuming from %s", out / LAST)
        return str(out / LAST)
    return None


def finished(cfg: DictConfig) -> dict[str, Any] | None:
    """With ``resume=true``, the stored final metrics of a run that already finished in this folder, else ``None``."""
    path = Path(cfg.paths.output_dir) / METRICS
    if not cfg.get("resume") or not path.is_file():
        return None
    log.info("skipping: %s already holds this run's final metrics", path)
    return json.loads(path.read_text())
