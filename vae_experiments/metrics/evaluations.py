"""Evaluations that run once after the test loop, on rank zero, configured under ``eval.*``.

``eval.toy2d``: Soft-IntroVAE's 2-D metrics (``test/toy2d_gnelbo``, ``test/toy2d_kl``, ``test/toy2d_jsd``) on the
test split, for 2-D vector data only.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from vae_experiments.metrics.toy2d import toy2d_metrics
from vae_experiments.model import VAE


def _points(loader: Any) -> torch.Tensor:
    return torch.cat([b[0] if isinstance(b, tuple | list) else b for b in loader])


def run_test_evaluations(eval_cfg: DictConfig, model: VAE, datamodule: Any) -> dict[str, Any]:
    """The enabled evaluations' flat results (``test/...`` values and the protocol beside them)."""
    out: dict[str, Any] = {}
    device = next(model.parameters()).device
    toy = eval_cfg.get("toy2d")
    if toy is not None and toy.enabled and tuple(model.data_shape) == (2,):
        data = _points(datamodule.test_dataloader()).to(device)
        values = toy2d_metrics(model, data, toy.half_width, toy.n_samples, toy.bins, toy.grid_points)
        out.update({f"test/toy2d_{k}": v for k, v in values.items()})
        out["test/toy2d_protocol"] = (
            f"{toy.n_samples} model samples vs {data.shape[0]} test points, {toy.bins}^2 histograms and a "
            f"{toy.grid_points}^2 ELBO grid on [-{toy.half_width}, {toy.half_width}]^2, model in eval mode"
        )
    return out
