"""The Soft-IntroVAE authors' training iteration (docs/soft_intro_vae.md#training-step), re-created from their
``train_soft_intro_vae.py``.

A yardstick for ``scripts/bench_soft_intro.py --authors-style 1``, not part of the project: the same IntroVAE nets,
run the authors' way (NCHW, for-loop Adam, the decoder evaluated with autograd on in the encoder step, every
quantity of the step computed as they compute it, including the non-detached x_r target), timed in the same minutes as
ours. Only its cost is of interest; the runner's Soft-IntroVAE is checked against the formulas in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from vae_experiments.model import VAE
from vae_experiments.objectives.soft_intro import decoder_side, encoder_side


def authors_step(
    model: VAE,
    x: Tensor,
    lr: float = 2e-4,
    beta_rec: float = 1.0,
    beta_kl: float = 1.0,
    beta_neg: float = 256.0,
    gamma_r: float = 1e-8,
) -> Callable[[int], None]:
    """One iteration of the authors' step on the fixed batch ``x``: the encoder step, then the decoder step."""
    enc, dec = encoder_side(model), decoder_side(model)
    opt_e, opt_d = torch.optim.Adam(enc, lr=lr), torch.optim.Adam(dec, lr=lr)
    scale = 1.0 / math.prod(x.shape[1:])

    def encode(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = model.posterior.head(model.encoder(images)).chunk(2, dim=-1)
        return mu, logvar, mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def kl(mu: Tensor, logvar: Tensor) -> Tensor:
        return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)

    def sse(a: Tensor, b: Tensor) -> Tensor:
        return (a - b).pow(2).flatten(1).sum(-1)

    def requires_grad(params: list[torch.nn.Parameter], flag: bool) -> None:
        for p in params:
            p.requires_grad_(flag)

    def step(i: int) -> None:
        eps = torch.randn(x.shape[0], model.latent_dim, device=x.device)
        # encoder step
        requires_grad(dec, False)
        x_f = model.decoder(eps)
        mu, logvar, z = encode(x)
        x_r = model.decoder(z)
        mu_r, logvar_r, z_r = encode(x_r.detach())
        mu_f, logvar_f, z_f = encode(x_f.detach())
        rec_rec, rec_fake = sse(model.decoder(z_r), x_r), sse(model.decoder(z_f), x_f)
        exp_rec = torch.exp(-2 * scale * (beta_rec * rec_rec + beta_neg * kl(mu_r, logvar_r))).mean()
        exp_fake = torch.exp(-2 * scale * (beta_rec * rec_fake + beta_neg * kl(mu_f, logvar_f))).mean()
        loss_e = scale * (beta_rec * sse(x_r, x).mean() + beta_kl * kl(mu, logvar).mean()) + 0.25 * (exp_rec + exp_fake)
        opt_e.zero_grad()
        loss_e.backward()
        opt_e.step()
        requires_grad(dec, True)
        # decoder step
        requires_grad(enc, False)
        x_f = model.decoder(eps)
        x_r = model.decoder(z.detach())
        mu_r, logvar_r, z_r = encode(x_r)
        mu_f, logvar_f, z_f = encode(x_f)
        rec_rec = sse(model.decoder(z_r.detach()), x_r.detach()).mean()
        rec_fake = sse(model.decoder(z_f.detach()), x_f.detach()).mean()
        loss_d = scale * (
            beta_rec * sse(x_r, x).mean()
            + 0.5 * beta_kl * (kl(mu_r, logvar_r).mean() + kl(mu_f, logvar_f).mean())
            + 0.5 * gamma_r * beta_rec * (rec_rec + rec_fake)
        )
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        requires_grad(enc, True)

    return step
