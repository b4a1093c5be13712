"""The test phase and ``metrics.json``, one path for ``vae-train`` and ``vae-eval``."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from vae_experiments.atomic import write_text_atomically
from vae_experiments.callbacks.resumable_test import FID_PROGRESS, FIDProgress, ResumableTestLoop
from vae_experiments.metrics.evaluations import run_test_evaluations
from vae_experiments.module import VAEModule
from vae_experiments.resume import METRICS
from vae_experiments.signals import StopOnSignal


def write_final_metrics(
    trainer: L.Trainer,
    module: VAEModule,
    datamodule: L.LightningDataModule,
    eval_cfg: DictConfig,
    seed: int,
    out: Path,
    known: dict[str, Any],
    test: bool = True,
    stop: StopOnSignal | None = None,
) -> dict[str, Any]:
    """Test ``module`` (unless ``test`` is false), run the extra evaluations of ``eval_cfg`` on rank zero and write
    ``out/metrics.json`` (rank zero, atomically): ``known`` (what the caller knows: ``val/*``, ``train/*``, the
    checkpoint) and the ``test/*`` values. Returns the metrics.

    The test loop and the extra evaluations each start from ``seed``, so their draws (posterior samples, importance
    samples, FID's samples) depend on the weights only: not on the random state training left behind, nor on which
    callbacks drew images in between. ``vae-eval`` on a run's last checkpoint, with the run's seed, then reproduces
    the run's test metrics exactly, and so does a run resumed after it was killed while testing: its test loop
    continues after the last test batch it finished (``ResumableTestLoop``, its progress in ``out`` until
    metrics.json is written), and its FID after the last images it saved (``FIDProgress``: at most a minute of it
    is computed again). ``stop`` turns a signal that came during the test call into ``Interrupted`` when it returns,
    before anything is written.
    """
    metrics = dict(known)
    settings = OmegaConf.to_container(eval_cfg, resolve=True)
    # nll_max_rows batches the same k draws (a memory knob): a test stopped for memory continues with a smaller one
    settings.pop("nll_max_rows", None)
    progress = ResumableTestLoop(out, {"eval": settings, "seed": seed})
    if test:
        L.seed_everything(seed, workers=True, verbose=False)
        trainer.callbacks.append(progress)
        try:
            with stop.trainer_call(trainer) if stop is not None else nullcontext():
                trainer.test(module, datamodule=datamodule, verbose=False)
        finally:
            trainer.callbacks.remove(progress)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        metrics.update(module.test_extras)
        if trainer.is_global_zero:
            L.seed_everything(seed, workers=True, verbose=False)
            # what decides the FID's numbers: its settings, the seed it starts from, the data (not k, not the ELBO's)
            context = {"eval.fid": settings.get("fid"), "seed": seed, "data": dict(getattr(datamodule, "hparams", {}))}
            key = json.dumps(context, sort_keys=True, default=str)
            fid = FIDProgress(out / FID_PROGRESS, progress.key[0], key)  # the test loop's digest of these weights
            extra = run_test_evaluations(eval_cfg, module.model, datamodule, fid)
            scalars = {k: v for k, v in extra.items() if isinstance(v, float)}
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)
                logger.save()
            metrics.update(extra)
    if trainer.is_global_zero:
        publish_final_metrics(trainer, metrics)
        write_text_atomically(out / METRICS, json.dumps(metrics, indent=2, sort_keys=True))
        print_summary(metrics, out)
    trainer.strategy.barrier()  # every rank's progress stays until metrics.json is written
    progress.path(trainer).unlink(missing_ok=True)
    if trainer.is_global_zero:
        (out / FID_PROGRESS).unlink(missing_ok=True)
    return metrics


def publish_final_metrics(trainer: L.Trainer, metrics: dict[str, Any]) -> None:
    """Hand ``metrics.json``'s content to the loggers that keep a run's final values: wandb's run summary gets every
    key (lists and strings too); TensorBoard's HPARAMS tab gets the logged hyper-parameters (the config, the
    parameter count, how the run computes what it reports) beside the numeric final metrics, which are logged as
    scalars at the last step, where the HPARAMS tab reads them."""
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}  # bools too: 0 / 1
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(metrics)
        elif isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(logger.hparams, metrics=numbers, step=trainer.global_step)
            logger.save()


def print_summary(metrics: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="final metrics", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(metrics.items()):
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
        elif isinstance(value, int):
            table.add_row(key, str(value))
    console = Console()
    console.print(table)
    console.print(f"run directory: {out}")
