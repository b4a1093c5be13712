"""wandb: one run per job, one group per sweep, and a resumed run continues the same wandb run.

The run id lives in the run folder (``wandb_run_id``); resuming from a checkpoint reads it from that checkpoint's run
folder and passes ``id=..., resume="allow"``. Offline runs (``logger.wandb.offline=true``) sync later with
``wandb sync RUN/wandb/offline-run-*``.
"""

from __future__ import annotations

import copy
import sys
import uuid
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, open_dict, read_write

from vae_experiments.sweep import in_multirun

RUN_ID = "wandb_run_id"


def run_folder(ckpt_path: str) -> Path:
    """``RUN/checkpoints/x.ckpt`` -> ``RUN``."""
    return Path(ckpt_path).resolve().parent.parent


def wandb_node(cfg: DictConfig, node: DictConfig, ckpt_path: str | None) -> DictConfig:
    """The wandb logger's config node with what it cannot know set: the run id (the resumed run's, else a new one,
    stored in the run folder) and, under ``-m`` with no ``logger.wandb.group``, the sweep folder's name as the group.
    Set in a copy of the node rather than passed as keyword arguments, where ``group`` would clash with ``group: null``
    (and with the group argument of ``build_node``)."""
    out = Path(cfg.paths.output_dir)
    stored = [folder / RUN_ID for folder in (out, *([run_folder(ckpt_path)] if ckpt_path else []))]
    run_id = next((p.read_text().strip() for p in stored[::-1] if p.is_file()), None) or uuid.uuid4().hex[:8]
    write_run_id(out, run_id)
    node = copy.deepcopy(node)
    with read_write(node), open_dict(node):
        node.id = run_id
        node.resume = "allow"
        if not node.get("group") and in_multirun():
            node.group = Path(HydraConfig.get().sweep.dir).name
    return node


@rank_zero_only
def write_run_id(out: Path, run_id: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_ID).write_text(run_id)


def finish() -> None:
    """Close the job's wandb run (when one is open), so the next job of a sweep starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
