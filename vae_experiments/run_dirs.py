"""Run folders: default names that two launches never share, and no run writing into another run's folder.

``${uid:}`` (in ``conf/hydra/default.yaml``'s ``run.dir`` and ``sweep.dir``) is six random hex digits drawn once
per process, so runs started in the same second get different folders. Like Hydra's ``${now:...}`` it is also
cached in the config (``use_cache``), and Hydra hands that cache to the jobs of a sweep, including submitit's jobs in
other processes, so every job agrees on its sweep folder.

``RunFolderGuard`` (a Hydra callback) refuses, before Hydra writes anything into the folder, a run whose folder
holds a finished run (``metrics.json``) or checkpoints, unless the run resumes (``resume=true``, ``ckpt_path=last``,
or a ``ckpt_path`` inside that folder); for a sweep, the same for every job folder under the sweep folder.
"""

from __future__ import annotations

import functools
import secrets
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vae_experiments.errors import ConfigError
from vae_experiments.resume import METRICS


@functools.cache
def process_uid() -> str:
    return secrets.token_hex(3)


def draw_new_uid() -> None:
    """A new ``${uid:}`` for the configs resolved from now on in this process (``api.config``: a folder per call).
    Configs that resolved it already keep theirs (OmegaConf's resolver cache)."""
    process_uid.cache_clear()


def register_uid_resolver() -> None:
    """Make ``${uid:}`` known to OmegaConf (before Hydra composes or resolves a config naming a run folder)."""
    OmegaConf.register_new_resolver("uid", process_uid, use_cache=True, replace=True)


def refuse_occupied(cfg: DictConfig, folder: Path, dir_key: str = "hydra.run.dir") -> None:
    """Raise a one-line ``ConfigError`` when ``folder`` holds another run (``metrics.json`` or a checkpoint) and
    ``cfg`` does not resume it (``resume=true``, ``ckpt_path=last``, or a ``ckpt_path`` inside ``folder``)."""
    can_resume = "resume" in cfg  # vae-train's config; vae-eval's ckpt_path is the checkpoint it evaluates
    ckpt = cfg.get("ckpt_path")
    if can_resume and (cfg.resume or ckpt == "last" or (ckpt and folder.resolve() in Path(ckpt).resolve().parents)):
        return
    if (folder / METRICS).is_file():
        fix = ", or pass resume=true (returns its metrics) or ckpt_path=last (trains it further)" if can_resume else ""
        raise ConfigError(f"{folder} holds a finished run ({METRICS}): choose another {dir_key}{fix}")
    checkpoints = sorted((folder / "checkpoints").glob("*.ckpt"))
    if checkpoints:
        fix = ", or continue that run with resume=true" if can_resume else ""
        raise ConfigError(
            f"{folder} holds another run's checkpoints ({checkpoints[0].name}): choose another {dir_key}{fix}"
        )


class RunFolderGuard(Callback):
    """Checks the run folder (``-m``: every job folder already under the sweep folder) before anything is written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_error(lambda: refuse_occupied(config, Path(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)

        def check() -> None:
            for job in sorted(p.parent for p in sweep_dir.glob("*/.hydra")):
                refuse_occupied(config, job, "hydra.sweep.dir")

        _exit_on_error(check)


def _exit_on_error(check: Any) -> None:
    # raised from a Hydra callback, a ConfigError would reach the user as Hydra's stack trace
    try:
        check()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
