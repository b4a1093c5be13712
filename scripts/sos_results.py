"""Sample coherence of saved runs: how spatially structured is what the observation model adds to its mean?

    PYTHONPATH=. python scripts/sos_results.py RUN_DIR [RUN_DIR ...] --n 1000 --grids docs/results

For each run (``vae_experiments.api.load``: the model of ``RUN/checkpoints/last.ckpt``, in eval mode):

* ``sample_autocorr``: z ~ p(z), x ~ p(x|z); the residual r = x - E[x|z]; the lag-1 correlation of r between
  horizontally and vertically adjacent pixels (Pearson over all pixel pairs of an image, averaged over ``n`` images
  and the two directions). A diagonal Gaussian's residuals are white noise (about 0).
* ``data_autocorr``: the same statistic for real residuals x - E[x|E_q[z]] on the first ``n`` test images: what a
  model's sample residuals should look like.
* ``mean_std``: the average predicted marginal standard deviation of p(x|z) (per value).

With ``--grids DIR``: ``DIR/<name>_means.png``, ``_samples.png`` and ``_residuals.png`` (residuals scaled to
[0, 1] with 0 at grey) of 64 prior draws, the same z for the three.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import save_image

from vae_experiments import api
from vae_experiments.model import VAE, posterior_mean


def lag1_autocorr(r: Tensor) -> Tensor:
    """Mean over the horizontal and vertical directions of the per-image Pearson correlation of neighbours."""
    out = []
    for a, b in ((r[..., :, :-1], r[..., :, 1:]), (r[..., :-1, :], r[..., 1:, :])):
        a, b = a.flatten(1), b.flatten(1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        out.append((a * b).sum(1) / (a.square().sum(1) * b.square().sum(1)).sqrt().clamp_min(1e-12))
    return torch.stack(out).mean(0)


def load(run: Path) -> tuple[VAE, Tensor]:
    trained = api.load(run)
    trained.datamodule.setup("test")
    return trained.module.model, torch.cat(list(trained.datamodule.test_dataloader()))


@torch.no_grad()
def coherence(model: VAE, x: Tensor, n: int, grids: Path | None, name: str) -> dict[str, float]:
    torch.manual_seed(0)
    px = model.decode(model.prior.sample(n))
    samples, means = px.sample(), px.mean
    real = x[:n]
    recon = model.decode(posterior_mean(model.encode(real))).mean
    if grids is not None:
        grids.mkdir(parents=True, exist_ok=True)
        save_image(means[:64].clamp(0, 1), grids / f"{name}_means.png", nrow=8)
        save_image(samples[:64].clamp(0, 1), grids / f"{name}_samples.png", nrow=8)
        res = samples[:64] - means[:64]
        save_image((0.5 + res / (2 * res.abs().amax().clamp_min(1e-8))), grids / f"{name}_residuals.png", nrow=8)
    return {
        "sample_autocorr": float(lag1_autocorr(samples - means).mean()),
        "data_autocorr": float(lag1_autocorr(real - recon).mean()),
        "mean_std": float(px.variance.sqrt().mean()),
        "n": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--grids", type=Path, default=None)
    args = parser.parse_args()
    for run in args.runs:
        model, x = load(run)
        metrics = json.loads((run / "metrics.json").read_text())
        keep = {k: metrics[k] for k in ("test/nll", "test/elbo", "test/kl", "test/recon") if k in metrics}
        print(json.dumps({"run": str(run), **keep, **coherence(model, x, args.n, args.grids, run.name)}))


if __name__ == "__main__":
    main()
