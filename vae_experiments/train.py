"""``vae-train``: compose, validate, seed, fit, test, and leave metrics, checkpoints and images in the run folder."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from vae_experiments import resume, run_config, sweep, tracking
from vae_experiments.callbacks.csv_rows import CSVRows
from vae_experiments.callbacks.last_validation import LastValidation
from vae_experiments.callbacks.throughput import Throughput
from vae_experiments.capture import capture_training
from vae_experiments.checkpoint_checks import require_compatible_checkpoint
from vae_experiments.checkpointing import AtomicCheckpointIO
from vae_experiments.config_checks import check_against_data, check_train_config
from vae_experiments.entry import CONFIG_DIR, fail, keep_library_logs_off_stderr, mark_started, run_entry_point
from vae_experiments.errors import ConfigError
from vae_experiments.model import VAE, build_model
from vae_experiments.module import VAEModule
from vae_experiments.report import write_final_metrics
from vae_experiments.runtime import configure_runtime, wants_channels_last, warn_if_bf16_is_emulated
from vae_experiments.signals import StopOnSignal
from vae_experiments.validation import build_node, build_part, describe, preflight, validate_combination

log = logging.getLogger(__name__)
PARTS = ("encoder", "posterior", "prior", "decoder", "likelihood")


def build(cfg: DictConfig, require_data: bool = True) -> tuple[L.LightningDataModule, VAEModule]:
    """The DataModule and the LightningModule a config describes, validated (raises ``ConfigError``); the module's
    checkpoints carry the config (``run_config``). ``require_data=False``: the model only, whose shapes the data set
    knows without its files (loading a checkpoint to sample from it)."""
    datamodule = build_node(cfg.dataset, "dataset", shuffle_seed=cfg.seed)
    if require_data:
        datamodule.require_files()
    check_against_data(cfg, datamodule.data_shape)
    factories = {part: build_node(cfg[part], part) for part in PARTS}
    model = build_part(
        lambda **kw: build_model(factories, **kw),
        "model",
        data_shape=datamodule.data_shape,
        latent_dim=cfg.latent_dim,
    )
    objective = build_node(cfg.objective, "objective")
    validate_combination(model, datamodule, objective)
    terms = preflight(model, objective)
    module = VAEModule(
        model=model,
        objective=objective,
        optimizer=build_node(cfg.optimizer, "optimizer"),
        data_levels=datamodule.levels,
        nll_samples=cfg.eval.nll_samples,
        nll_max_rows=cfg.eval.nll_max_rows,
        elbo_samples=cfg.eval.elbo_samples,
    )
    module.run_info = describe(model, terms)
    module.run_config = run_config.portable(cfg)
    for key, value in module.run_info.items():
        log.info("%s: %s", key, value)
    if not terms.analytic_kl:
        log.info("no closed-form KL for this posterior/prior pair: the objective uses log q(z|x) - log p(z)")
    return datamodule, module


def build_trainer(cfg: DictConfig, *extra: L.Callback, ckpt_path: str | None = None) -> L.Trainer:
    """The configured Trainer, with its callbacks and loggers, plus ``extra`` callbacks (throughput, timers).

    A callback or logger set to null on the command line (callbacks.progress_bar=null) is switched off; wandb
    continues the run of a resumed ``ckpt_path``. Checkpoints are written atomically (``AtomicCheckpointIO``), and
    the CSV logger's file follows the checkpoint a fit resumes from (``CSVRows``).
    """
    callbacks = [build_node(node, f"callbacks.{name}") for name, node in (cfg.get("callbacks") or {}).items() if node]
    callbacks.extend([*extra, CSVRows()])
    loggers = [
        build_node(tracking.wandb_node(cfg, node, ckpt_path) if name == "wandb" else node, f"logger.{name}")
        for name, node in (cfg.get("logger") or {}).items()
        if node
    ]
    return build_node(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )


def apply_runtime_options(cfg: DictConfig, trainer: L.Trainer, module: VAEModule) -> None:
    """``channels_last`` and ``compile``, the same for training and for ``vae-eval`` (they change the numerics)."""
    if wants_channels_last(cfg.get("channels_last", False), trainer.strategy.root_device, module.model):
        module.use_channels_last()
    if cfg.get("compile"):
        module.model.compile_networks()


def capture_on_gpu(cfg: DictConfig, trainer: L.Trainer, module: VAEModule) -> None:
    """``capture``: on a CUDA device, the whole training iteration as a recorded CUDA graph (``capture``), or the log
    says which setting keeps it eager."""
    if not cfg.get("capture") or trainer.strategy.root_device.type != "cuda":
        return
    reason = capture_training(trainer, module)
    log.info("capture: %s", "the training iteration runs as a CUDA graph" if reason is None else f"off ({reason})")


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
    folder's last checkpoint and returns the stored metrics of a run that already finished there. SIGTERM or SIGINT
    stops the run so that it can be resumed: exit 143 / 130 and one line with the command that resumes it
    (``signals``).
    """
    if (done := resume.finished(cfg)) is not None:
        return done
    ckpt_path = resume.checkpoint(cfg)
    with StopOnSignal(resume.command(cfg)) as stop:
        configure_runtime()
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, module = build(cfg)
        if not cfg.dataset.get("download"):
            datamodule.setup("fit")  # split sizes that do not fit the data fail here, before the Trainer is built
        if ckpt_path is not None:
            require_compatible_checkpoint(ckpt_path, module)
        throughput, validation = Throughput(), LastValidation()
        trainer = build_trainer(cfg, throughput, validation, stop, ckpt_path=ckpt_path)
        warn_if_bf16_is_emulated(trainer.strategy.root_device, str(trainer.precision))
        try:
            log_hyperparameters(trainer, cfg, module.model)
            apply_runtime_options(cfg, trainer, module)
            capture_on_gpu(cfg, trainer, module)
            with stop.trainer_call(trainer):
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            # from the checkpoint when the fit had finished before a resume (Lightning then trains no more)
            fit: dict[str, Any] = {**validation.metrics, **module.run_info}
            if throughput.images_per_sec is not None:
                fit["train/images_per_sec"] = throughput.images_per_sec
            fit["train/epochs"] = trainer.current_epoch
            fit["train/steps"] = trainer.global_step
            out = Path(cfg.paths.output_dir)
            return write_final_metrics(
                trainer, module, datamodule, cfg.eval, cfg.seed, out, fit, test=cfg.get("test", True), stop=stop
            )
        finally:
            tracking.finish()


def optimized_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The metric a sweeper optimises; a missing or non-finite one is a clear error, never a silent 0."""
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric={name} is not among the final metrics; choose one of {sorted(metrics)}")
    value = float(metrics[name])
    return value if math.isfinite(value) else float("nan")


def run_job(cfg: DictConfig) -> float | None:
    """The job of ``vae-train`` (``vae_experiments.cli``) for one composed config: check it, train, return the
    optimised metric. A single run exits non-zero on a failure (one line for a ``ConfigError``, at most three for a
    diverged run); a sweep job writes its failure into its folder and returns NaN, so the other jobs still run
    (``SweepSummary`` lists the failures at the end)."""
    mark_started()
    keep_library_logs_off_stderr()
    multirun = sweep.in_multirun()
    if multirun:
        sweep.clear_failure(cfg)
    try:
        check_train_config(cfg)
        return optimized_value(train(cfg), cfg.get("optimized_metric"))
    except Exception as exc:
        if multirun:
            sweep.record_failure(cfg, exc)
            return float("nan")
        if isinstance(exc, ConfigError):
            fail(str(exc))
        if isinstance(exc, FloatingPointError):  # the run diverged: the message names the fix, a traceback adds nothing
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        raise


def main() -> None:
    """``vae-train`` with the runner imported up front (``python -m vae_experiments.train``; the console script is
    the lighter ``vae_experiments.cli.train``)."""
    run_entry_point(hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")(run_job))


if __name__ == "__main__":
    main()
