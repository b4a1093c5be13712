"""The run config a checkpoint carries, so that a checkpoint file alone rebuilds its model (``api.load``, ``vae-eval``).

``VAEModule.on_save_checkpoint`` stores ``portable(cfg)`` under ``CHECKPOINT_KEY``: the run's config as plain
containers, unresolved like Hydra's own ``.hydra/config.yaml`` (``${paths.data_dir}`` and ``${oc.env:...}`` resolve
where the checkpoint is loaded), except the values of Hydra's runtime (``${hydra:runtime.output_dir}``,
``${hydra:job.override_dirname}``), which exist only while Hydra runs a job and are stored as they were.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import Container, DictConfig, ListConfig, OmegaConf, open_dict, read_write

from vae_experiments.errors import ConfigError

CHECKPOINT_KEY = "vae_experiments_config"
HYDRA_RUNTIME = "${hydra:"


def pin_runtime_values(cfg: DictConfig) -> None:
    """Replace, in place, every ``${hydra:...}`` interpolation outside the ``hydra`` node by its value now (Hydra's
    runtime, ``HydraConfig``, must be set)."""

    def visit(node: Container) -> None:
        keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            if node is cfg and key == "hydra":
                continue
            child = node._get_node(key)
            if child._is_interpolation() and HYDRA_RUNTIME in str(child._value()):
                node[key] = node[key]
            elif isinstance(child, DictConfig | ListConfig):
                visit(child)

    with read_write(cfg), open_dict(cfg):
        visit(cfg)


def portable(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` without the ``hydra`` node, as plain containers that a checkpoint can hold (``torch.load`` with
    ``weights_only=True`` reads them): interpolations kept, Hydra's runtime values pinned (``pin_runtime_values``)."""
    pinned = copy.deepcopy(cfg)
    pin_runtime_values(pinned)
    plain = OmegaConf.to_container(pinned, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    return plain


def of_checkpoint(ckpt_path: Path, checkpoint: dict[str, Any]) -> DictConfig:
    """The run config of ``checkpoint`` (loaded from ``ckpt_path``): the one it carries, or, for a checkpoint written
    before checkpoints carried one, the ``.hydra/config.yaml`` of the run folder it is in."""
    if CHECKPOINT_KEY in checkpoint:
        return OmegaConf.create(checkpoint[CHECKPOINT_KEY])
    for parent in ckpt_path.resolve().parents:
        candidate = parent / ".hydra" / "config.yaml"
        if candidate.is_file():
            cfg = OmegaConf.load(candidate)
            assert isinstance(cfg, DictConfig)
            return cfg
    raise ConfigError(
        f"{ckpt_path} carries no run config (it predates checkpoints that do) and no .hydra/config.yaml is above it: "
        "load it from inside its vae-train run folder"
    )
