"""``vae-train`` and ``vae-eval``: Hydra's entry points, light enough that ``--help``, ``--cfg``, TAB completion and
a configuration error return without importing torch or Lightning (the runner loads only when a run starts).

A single run's config is checked (``config_checks``) before the runner is imported; the runner checks again
(cheaply) for the jobs of a sweep, where a bad config fails only its own job. ``python -m vae_experiments.train``
and ``python -m vae_experiments.evaluate`` run the same jobs with the runner imported up front.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vae_experiments.config_checks import check_eval_config, check_train_config
from vae_experiments.entry import CONFIG_DIR, fail, mark_started, run_entry_point
from vae_experiments.errors import ConfigError
from vae_experiments.sweep import in_multirun


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _train_task(cfg: DictConfig) -> float | None:
    mark_started()
    if not in_multirun():
        try:
            check_train_config(cfg)
        except ConfigError as exc:
            fail(str(exc))  # here, not raised: Hydra would print a line of its own before it
    from vae_experiments.train import run_job

    return run_job(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _eval_task(cfg: DictConfig) -> None:
    mark_started()
    try:
        check_eval_config(cfg)
    except ConfigError as exc:
        fail(str(exc))
    from vae_experiments.evaluate import run_job

    run_job(cfg)


def train() -> None:
    """``vae-train``."""
    run_entry_point(_train_task)


def evaluate() -> None:
    """``vae-eval``."""
    run_entry_point(_eval_task)
