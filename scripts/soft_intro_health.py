"""Reconstruction MSE, KL of real vs generated images, for any saved run (Soft-IntroVAE or not), one protocol for all.

    python scripts/soft_intro_health.py RUN_DIR [RUN_DIR ...] --n 1000

For each run: the model of ``RUN/checkpoints/last.ckpt`` (``vae_experiments.api.load``, in eval mode); it reports
on the first ``n`` test images: ``mse`` (mean squared error per value between x and the decoder's mean at
E_q[z]), ``kl_real`` = <KL(q(z|x) || p(z))>, and ``kl_fake`` = <KL(q(z|x_f) || p(z))> for ``n`` generated
x_f = mean of p(x|z), z ~ p(z). Soft-IntroVAE trains the encoder to make kl_fake > kl_real; a plain VAE does not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vae_experiments import api
from vae_experiments.model import closed_form_kl, posterior_mean


@torch.no_grad()
def health(run: Path, n: int) -> dict[str, float]:
    trained = api.load(run)
    model, datamodule = trained.module.model, trained.datamodule
    datamodule.setup("test")
    x = torch.cat(list(datamodule.test_dataloader()))[:n]
    q = model.encode(x)
    mse = (model.decode(posterior_mean(q)).mean - x).pow(2).mean()
    fakes = model.sample(x.shape[0])
    return {
        "mse": float(mse),
        "kl_real": float(closed_form_kl(q, model.prior).mean()),
        "kl_fake": float(closed_form_kl(model.encode(fakes), model.prior).mean()),
        "n": x.shape[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    torch.manual_seed(0)
    for run in args.runs:
        print(json.dumps({"run": str(run), **health(run, args.n)}))


if __name__ == "__main__":
    main()
