"""``vae-eval``: re-run the test-time evaluation of a saved run, with other settings (a larger k, say)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from vae_experiments.errors import ConfigError
from vae_experiments.metrics.evaluations import run_test_evaluations
from vae_experiments.train import CONFIG_DIR, build, print_summary


def run_config(ckpt_path: Path) -> DictConfig:
    """The saved config of the run a checkpoint is in: ``RUN/checkpoints/x.ckpt`` -> ``RUN/.hydra/config.yaml``."""
    for parent in ckpt_path.resolve().parents:
        candidate = parent / ".hydra" / "config.yaml"
        if candidate.is_file():
            return OmegaConf.load(candidate)
    raise ConfigError(f"no .hydra/config.yaml above {ckpt_path}: pass a checkpoint inside a vae-train run directory")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild the run's model and data from its config, load the checkpoint's weights, test, write metrics.json."""
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError(f"checkpoint {ckpt_path} not found: pass ckpt_path=RUN/checkpoints/last.ckpt")
    run_cfg = run_config(ckpt_path)
    with open_dict(run_cfg):
        run_cfg.eval = OmegaConf.merge(run_cfg.eval, cfg.eval)
        run_cfg.paths.output_dir = cfg.paths.output_dir
        run_cfg.merge_with_dotlist(list(cfg.overrides))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module = build(run_cfg)
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    module.load_state_dict(checkpoint["state_dict"])
    trainer = hydra.utils.instantiate(run_cfg.trainer, logger=False, callbacks=[], max_epochs=None)
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    metrics.update(module.test_extras)
    if trainer.is_global_zero:
        metrics.update(run_test_evaluations(run_cfg.eval, module.model, datamodule))
    metrics["checkpoint"] = str(ckpt_path.resolve())
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        print_summary(metrics, out)
    return metrics


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
