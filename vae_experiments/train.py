"""``vae-train``: compose, validate, seed, fit, test, and leave metrics, checkpoints and images in the run folder."""

from __future__ import annotations

import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from vae_experiments import resume, sweep, tracking
from vae_experiments.callbacks.throughput import Throughput
from vae_experiments.errors import ConfigError
from vae_experiments.metrics.evaluations import run_test_evaluations
from vae_experiments.model import VAE, build_model
from vae_experiments.module import VAEModule
from vae_experiments.runtime import configure_runtime, wants_channels_last, warn_if_bf16_is_emulated
from vae_experiments.validation import build_part, check_combination, describe, instantiate, preflight

log = logging.getLogger(__name__)
PARTS = ("encoder", "posterior", "prior", "decoder", "likelihood")
# The config root beside the package (the product's layout); absolute, because Hydra reads a relative path against
# the *package* of an installed console script, where conf/ is not.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, VAEModule]:
    """The DataModule and the LightningModule a config describes, validated (raises ``ConfigError``)."""
    datamodule = instantiate(cfg.dataset, "dataset", shuffle_seed=cfg.seed)
    if hasattr(datamodule, "check"):
        datamodule.check()
    factories = {part: instantiate(cfg[part], part) for part in PARTS}
    model = build_part(
        lambda **kw: build_model(factories, **kw),
        "model",
        data_shape=datamodule.data_shape,
        latent_dim=cfg.latent_dim,
    )
    objective = instantiate(cfg.objective, "objective")
    check_combination(model, datamodule, objective)
    terms = preflight(model, objective)
    module = VAEModule(
        model=model,
        objective=objective,
        optimizer=instantiate(cfg.optimizer, "optimizer"),
        data_levels=datamodule.levels,
        nll_samples=cfg.eval.nll_samples,
        nll_max_rows=cfg.eval.nll_max_rows,
    )
    module.run_info = describe(model, terms)
    for key, value in module.run_info.items():
        log.info("%s: %s", key, value)
    if not terms.analytic_kl:
        log.info("no closed-form KL for this posterior/prior pair: the objective uses log q(z|x) - log p(z)")
    return datamodule, module


def build_trainer(cfg: DictConfig, *extra: L.Callback, ckpt_path: str | None = None) -> L.Trainer:
    """The configured Trainer, with its callbacks and loggers, plus ``extra`` callbacks (throughput, timers).

    A callback or logger set to null on the command line (callbacks.progress_bar=null) is switched off; wandb
    continues the run of a resumed ``ckpt_path``.
    """
    callbacks = [instantiate(node, f"callbacks.{name}") for name, node in (cfg.get("callbacks") or {}).items() if node]
    callbacks.extend(extra)
    loggers = [
        instantiate(node, f"logger.{name}", **(tracking.wandb_kwargs(cfg, ckpt_path) if name == "wandb" else {}))
        for name, node in (cfg.get("logger") or {}).items()
        if node
    ]
    return instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)


def log_hyperparameters(trainer: L.Trainer, cfg: DictConfig, model: VAE) -> None:
    params = {
        "config": {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in cfg.items()
            if k != "hydra"
        },
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test the model ``cfg`` describes; write ``metrics.json``; return the flat final metrics.

    Resume: ``ckpt_path`` (a path, or ``last`` for this run folder's), or ``resume=true``, which continues from the
    folder's last checkpoint and returns the stored metrics of a run that already finished there.
    """
    if (done := resume.finished(cfg)) is not None:
        return done
    out = Path(cfg.paths.output_dir)
    ckpt_path = resume.checkpoint(cfg)
    configure_runtime()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module = build(cfg)
    throughput = Throughput()
    trainer = build_trainer(cfg, throughput, ckpt_path=ckpt_path)
    warn_if_bf16_is_emulated(trainer.strategy.root_device, str(trainer.precision))
    try:
        log_hyperparameters(trainer, cfg, module.model)
        if wants_channels_last(cfg.get("channels_last", False), trainer.strategy.root_device, module.model):
            module.use_channels_last()
        if cfg.get("compile"):
            module.model.compile_networks()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        # the last validation epoch's metrics; trainer.test() replaces callback_metrics
        metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if cfg.get("test", True):
            trainer.test(module, datamodule=datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
            metrics.update(module.test_extras)
            if trainer.is_global_zero:
                extra = run_test_evaluations(cfg.eval, module.model, datamodule)
                scalars = {k: v for k, v in extra.items() if isinstance(v, float)}
                for logger in trainer.loggers:
                    logger.log_metrics(scalars, step=trainer.global_step)
                    logger.save()
                metrics.update(extra)
    finally:
        tracking.finish()
    if throughput.images_per_sec is not None:
        metrics["train/images_per_sec"] = throughput.images_per_sec
    metrics["train/epochs"] = trainer.current_epoch
    metrics["train/steps"] = trainer.global_step
    metrics.update(module.run_info)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        print_summary(metrics, out)
    return metrics


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


def optimized_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The metric a sweeper optimises; a missing or non-finite one is a clear error, never a silent 0."""
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name} is not among the final metrics; choose one of {sorted(metrics)}")
    value = float(metrics[name])
    return value if math.isfinite(value) else float("nan")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    """A single run exits non-zero on a failure (one line for a ``ConfigError``); a sweep job writes its failure into
    its folder and returns NaN, so the other jobs still run (``SweepSummary`` lists the failures at the end)."""
    multirun = sweep.in_multirun()
    if multirun:
        sweep.clear_failure(cfg)
    try:
        return optimized_value(train(cfg), cfg.get("optimized_metric"))
    except Exception as exc:
        if multirun:
            sweep.record_failure(cfg, exc)
            return float("nan")
        if isinstance(exc, ConfigError):
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        raise


def main() -> None:
    # conf/hydra/launcher/submitit_slurm.yaml documents the plugin's fields and is checked against its schema
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_slurm' is validated", category=UserWarning)
    _hydra_main()


if __name__ == "__main__":
    main()
