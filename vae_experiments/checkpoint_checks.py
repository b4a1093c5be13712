"""A checkpoint is read and held against the model before it is used: one ``ConfigError`` line instead of a
traceback from ``torch.load`` or ``load_state_dict`` (a truncated file, not a checkpoint, another architecture)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vae_experiments.errors import ConfigError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict (on the CPU), or a ``ConfigError`` that names the file and why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path} does not exist: pass RUN/checkpoints/last.ckpt of a vae-train run")
    try:
        # weights_only=False: a Lightning checkpoint holds loop and callback states, not only tensors
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"ckpt_path={path} is not a readable checkpoint ({type(exc).__name__}: {reason}): pass a .ckpt file "
            "written by vae-train (RUN/checkpoints/last.ckpt)"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(
            f"ckpt_path={path} holds no Lightning state_dict: pass a .ckpt file written by vae-train "
            "(RUN/checkpoints/last.ckpt)"
        )
    return checkpoint


def state_dict_mismatch(saved: dict[str, Any], expected: dict[str, torch.Tensor]) -> str | None:
    """The first difference between a saved ``state_dict`` and the model's (missing, unexpected, other shape)."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    if missing:
        return f"the model has {missing[0]} (and {len(missing) - 1} more) that the checkpoint lacks"
    if unexpected:
        return f"the checkpoint has {unexpected[0]} (and {len(unexpected) - 1} more) that the model lacks"
    for key, tensor in expected.items():
        shape = tuple(getattr(saved[key], "shape", ()))
        if shape != tuple(tensor.shape):
            return f"{key} is {list(shape)} in the checkpoint but {list(tensor.shape)} in the model"
    return None


def require_compatible_checkpoint(path: str | Path, module: nn.Module) -> dict[str, Any]:
    """Load ``path`` and check that its weights fit ``module`` key for key and shape for shape; return it."""
    checkpoint = load_checkpoint(path)
    require_compatible_weights(path, checkpoint, module)
    return checkpoint


def require_compatible_weights(path: str | Path, checkpoint: dict[str, Any], module: nn.Module) -> None:
    """The loaded ``checkpoint`` (from ``path``) fits ``module`` key for key and shape for shape."""
    mismatch = state_dict_mismatch(checkpoint["state_dict"], module.state_dict())
    if mismatch is not None:
        raise ConfigError(
            f"ckpt_path={path} was made by another model configuration ({mismatch}): pass the overrides of the run "
            "that wrote it, or a checkpoint of this configuration"
        )
