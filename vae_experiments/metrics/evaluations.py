"""Evaluations that run once after the test loop, on rank zero, configured under ``eval.*``.

``eval.toy2d``: Soft-IntroVAE's 2-D metrics (``test/toy2d_gnelbo``, ``test/toy2d_kl``, ``test/toy2d_jsd``) on the
test split, for 2-D vector data only.
``eval.fid`` (``enabled``): ``test/fid`` between ``n`` samples (z ~ p(z), the likelihood's mean) and ``n_reference``
images of ``reference_split``, for images only, with the protocol beside it as ``test/fid_*`` (counts, split, the
VAE's mode while sampling, Inception, resize, preprocessing). ``model_mode: train`` samples from a copy of the model
in train mode (BatchNorm on batch statistics, the Soft-IntroVAE repository's protocol), so the run's own BatchNorm
statistics are untouched.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from omegaconf import DictConfig

from vae_experiments.metrics.fid import Progress, compute_fid
from vae_experiments.metrics.inception import load_inception
from vae_experiments.metrics.toy2d import toy2d_metrics
from vae_experiments.model import VAE


def _points(loader: Any) -> torch.Tensor:
    return torch.cat([b[0] if isinstance(b, tuple | list) else b for b in loader])


def run_test_evaluations(
    eval_cfg: DictConfig, model: VAE, datamodule: Any, fid_progress: Progress | None = None
) -> dict[str, Any]:
    """The enabled evaluations' flat results (``test/...`` values and the protocol beside them); the FID continues
    from ``fid_progress`` (see ``compute_fid``)."""
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
    fid = eval_cfg.get("fid")
    if fid is not None and fid.enabled and len(model.data_shape) == 3:
        out.update(fid_evaluation(fid, model, datamodule, device, fid_progress))
    return out


def fid_evaluation(
    fid: DictConfig, model: VAE, datamodule: Any, device: torch.device, progress: Progress | None = None
) -> dict[str, Any]:
    split = fid.reference_split
    datamodule.setup("test" if split == "test" else "fit")
    reference = getattr(datamodule, f"{split}_dataloader")()
    sampler = copy.deepcopy(model).train() if fid.model_mode == "train" else model
    was_training = model.training
    model.eval()
    try:
        result = compute_fid(
            lambda k: sampler.sample(k),
            reference,
            fid.n,
            fid.batch_size,
            model_mode=fid.model_mode,
            reference_split=split,
            reference_name=getattr(datamodule, "name", None),
            n_reference=fid.n_reference,
            image_shape=tuple(model.data_shape),
            inception=load_inception(fid.weights, device),
            progress=progress,
        )
    finally:
        model.train(was_training)
    fields = dataclasses.asdict(result)
    return {"test/fid": fields.pop("value"), **{f"test/fid_{k}": v for k, v in fields.items()}}
