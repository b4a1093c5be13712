"""``vae-eval``: re-run the test-time evaluation of a saved run, with other settings (a larger k, say)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vae_experiments import run_config
from vae_experiments.errors import ConfigError
from vae_experiments.report import write_final_metrics
from vae_experiments.runtime import configure_runtime
from vae_experiments.train import CONFIG_DIR, apply_runtime_options, build
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
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    run_cfg = run_config.of_checkpoint(ckpt_path, checkpoint)
    with open_dict(run_cfg):
        run_cfg.eval = OmegaConf.merge(run_cfg.eval, cfg.eval)
        run_cfg.paths.output_dir = cfg.paths.output_dir
        run_cfg.merge_with_dotlist(list(cfg.overrides))
    configure_runtime()
    L.seed_everything(run_cfg.seed, workers=True, verbose=False)
    datamodule, module = build(run_cfg)
    module.load_state_dict(checkpoint["state_dict"])
    trainer = build_node(run_cfg.trainer, "trainer", logger=False, callbacks=[], max_epochs=None)
    trainer.fit_loop.load_state_dict(checkpoint["loops"]["fit_loop"])  # the run's global step
    apply_runtime_options(run_cfg, trainer, module)
    known = {"checkpoint": str(ckpt_path.resolve())}
    out = Path(cfg.paths.output_dir)
    return write_final_metrics(trainer, module, datamodule, run_cfg.eval, run_cfg.seed, out, known)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
