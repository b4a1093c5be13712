"""``vae-eval``: re-run the test-time evaluation of a saved run, with other settings (a larger k, say)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from vae_experiments import run_config
from vae_experiments.checkpoint_checks import load_checkpoint, require_compatible_weights
from vae_experiments.config_checks import check_eval_config, check_run_config
from vae_experiments.entry import CONFIG_DIR, fail, keep_library_logs_off_stderr, mark_started, run_entry_point
from vae_experiments.errors import ConfigError
from vae_experiments.report import write_final_metrics
from vae_experiments.runtime import configure_runtime
from vae_experiments.train import apply_runtime_options, build
from vae_experiments.validation import build_node


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild the run's model and data from the config its checkpoint carries (or, for an older checkpoint, its run
    folder's ``.hydra/config.yaml``), load the checkpoint's weights, test, write metrics.json.

    The test phase is ``vae-train``'s (``report.write_final_metrics``), seeded with the run's ``seed``, at the run's
    optimiser step (what a scheduled weight in ``test/loss`` depends on), with its channels-last and compile
    settings: on the run's ``last.ckpt`` with its own ``eval`` settings it reproduces the run's ``test/*`` exactly.
    """
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError(f"checkpoint {ckpt_path} not found: pass ckpt_path=RUN/checkpoints/last.ckpt")
    checkpoint = load_checkpoint(ckpt_path)
    run_cfg = run_config.of_checkpoint(ckpt_path, checkpoint)
    if "loops" not in checkpoint:
        raise ConfigError(f"ckpt_path={ckpt_path} holds no training progress (loops): pass RUN/checkpoints/last.ckpt")
    with open_dict(run_cfg):
        run_cfg.eval = OmegaConf.merge(run_cfg.eval, cfg.eval)
        run_cfg.paths.output_dir = cfg.paths.output_dir
        run_cfg.merge_with_dotlist(list(cfg.overrides))
    check_run_config(run_cfg)
    configure_runtime()
    L.seed_everything(run_cfg.seed, workers=True, verbose=False)
    datamodule, module = build(run_cfg)
    require_compatible_weights(ckpt_path, checkpoint, module)
    module.load_state_dict(checkpoint["state_dict"])
    trainer = build_node(run_cfg.trainer, "trainer", logger=False, callbacks=[], max_epochs=None)
    trainer.fit_loop.load_state_dict(checkpoint["loops"]["fit_loop"])  # the run's global step
    apply_runtime_options(run_cfg, trainer, module)
    known = {"checkpoint": str(ckpt_path.resolve())}
    out = Path(cfg.paths.output_dir)
    return write_final_metrics(trainer, module, datamodule, run_cfg.eval, run_cfg.seed, out, known)


def run_job(cfg: DictConfig) -> None:
    """The job of ``vae-eval`` (``vae_experiments.cli``): a ``ConfigError`` is one line and exit 2."""
    mark_started()
    keep_library_logs_off_stderr()
    try:
        check_eval_config(cfg)
        evaluate(cfg)
    except ConfigError as exc:
        fail(str(exc))


def main() -> None:
    """``vae-eval`` with the runner imported up front (``python -m vae_experiments.evaluate``; the console script is
    the lighter ``vae_experiments.cli.evaluate``)."""
    run_entry_point(hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")(run_job))


if __name__ == "__main__":
    main()
