"""Soft-IntroVAE (Daniel & Tamar, CVPR 2021): the encoder is trained to tell real data from generated data by the
ELBO, the decoder to fool it, with a soft exponential penalty instead of IntroVAE's hard margin.

The exact training step of the authors' code (../shared/REFERENCE.md 4.2-4.3), with Lightning's manual optimisation
and two optimisers. Notation: s = 1 / D (D = C*H*W values per example; 1/3072 for CIFAR-10, 1/2 for the 2-D toys),
L_r(x, z) the reconstruction error, KL(x) = KL(q(z|x) || p(z)), x_r = D(z_x) with z_x ~ q(z|x) the reconstruction of
a real x and x_f = D(eps), eps ~ p(z), a generated image; z_r ~ q(z|x_r), z_f ~ q(z|x_f).

Encoder step (decoder side frozen)::

    L_E = s (b_rec <L_r(x, z_x)> + b_kl <KL(x)>)
          + 1/4 <exp(-2s (b_rec L_r(x_r, z_r) + b_neg KL(x_r)))> + 1/4 <exp(-2s (b_rec L_r(x_f, z_f) + b_neg KL(x_f)))>

Decoder step (encoder side frozen; same eps and same z_x as the encoder step)::

    L_D = s (b_rec <L_r(x, z_x)> + b_kl/2 (<KL(x_r)> + <KL(x_f)>)
             + g_r b_rec/2 (<L_r(x_r, sg(z_r))> + <L_r(x_f, sg(z_f))>))

``<.>`` is the batch mean, ``sg`` stop-gradient. As in the reference, the encoder step feeds ``x_r`` and ``x_f``
detached to the encoder, but the *target* ``x_r`` of ``L_r(x_r, z_r)`` is not detached, so that exp term also
reaches the encoder through z_x (REFERENCE 4.8 item 5); the decoder step's encodings of ``x_r``, ``x_f`` pass
gradients through the frozen encoder into the decoder, and ``L_r(x_r, sg(z_r))`` uses detached targets. During the
first ``vae_epochs`` epochs both optimisers take the unscaled VAE loss ``b_rec <L_r> + b_kl <KL>`` instead.

Reconstruction error: L_r(x, z) = -log p(x|z) - D * ``recon_offset``, the likelihood's negative log-probability less a
constant. The constant changes no gradient of the real-data terms, but inside exp(-2s(...)) it rescales the penalty
by exp(2 b_rec recon_offset), so it is part of the method's definition. A Gaussian with fixed sigma^2 = 1/2 has
-log p(x|z) = SSE(x, mu) + (D/2) log(pi); with ``recon_offset = log(pi)/2`` L_r is the reference's sum of squared
errors exactly (the ``experiment=soft_intro_vae*`` configs do this). Any other likelihood (Bernoulli, learned or
per-pixel sigma, low-rank) and any posterior/prior compose: the KL is the closed form when torch has one, else the
one-sample Monte-Carlo estimate log q(z|x) - log p(z). The logged ``elbo`` is always the true bound
E_q[log p(x|z)] - KL with the full likelihood, so runs stay comparable with other objectives.

Parameter split: the encoder side is encoder + posterior head + prior (a learned prior belongs to the ELBO that the
encoder maximises on real data and minimises on fakes; only the encoder loss has a real-data KL to fit it to), the
decoder side is decoder + likelihood parameters (a learned sigma). The other side's ``requires_grad`` is switched off
during each step and restored afterwards, as the reference does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vae_experiments.errors import ConfigError
from vae_experiments.model import VAE, closed_form_kl
from vae_experiments.objectives.base import Objective, OptimizerFactory
from vae_experiments.schedules import Schedule

if TYPE_CHECKING:
    from vae_experiments.module import VAEModule


@dataclass(frozen=True)
class Weights:
    """The weights at one iteration (schedules evaluated) and the scale s = 1 / D."""

    rec: float
    kl: float
    neg: float
    gamma_r: float
    scale: float


@contextmanager
def frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Switch ``requires_grad`` off for ``params`` and restore each one's previous setting afterwards."""
    params = list(params)
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)


def encoder_side(model: VAE) -> list[nn.Parameter]:
    return [*model.encoder.parameters(), *model.posterior.parameters(), *model.prior.parameters()]


def decoder_side(model: VAE) -> list[nn.Parameter]:
    return [*model.decoder.parameters(), *model.likelihood.parameters()]


def latent(model: VAE, x: Tensor) -> tuple[Tensor, Tensor]:
    """One reparameterised z ~ q(z|x) (B, d) and KL(q(z|x) || p(z)) per example (B,), closed form or Monte Carlo."""
    q = model.encode(x)
    z, log_qz = model.sample_posterior(q, 1)
    z, log_qz = z[0], log_qz[0]
    kl = closed_form_kl(q, model.prior)
    return z, (log_qz - model.prior.log_prob(z)) if kl is None else kl


class SoftIntroVAE(Objective):
    """``objective=soft_intro``: two Adam optimisers, an encoder step then a decoder step on every batch.

    ``beta_rec``, ``beta_kl``, ``beta_neg``, ``gamma_r`` may each be a schedule (of the iteration count, kept in the
    ``iteration`` buffer so a resumed run continues it). ``recon_offset``: nats per data value subtracted from
    -log p(x|z) (see the module docstring). A non-finite loss stops the run without its update being applied
    (``VAEModule.check_finite``: at once on the CPU; on a GPU the fused Adam skips it on the device and the run stops
    at the next check).
    """

    automatic_optimization = False
    non_finite_advice = "lower objective.beta_neg or the learning rate"

    def __init__(
        self,
        beta_rec: float | Schedule = 1.0,
        beta_kl: float | Schedule = 1.0,
        beta_neg: float | Schedule = 256.0,
        gamma_r: float | Schedule = 1e-8,
        vae_epochs: int = 0,
        recon_offset: float = 0.0,
    ) -> None:
        super().__init__()
        if vae_epochs < 0:
            raise ValueError(f"objective.vae_epochs must be >= 0, got {vae_epochs}")
        self.beta_rec = beta_rec
        self.beta_kl = beta_kl
        self.beta_neg = beta_neg
        self.gamma_r = gamma_r
        self.vae_epochs = vae_epochs
        self.recon_offset = recon_offset
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        # the buffer's value on the host, read once per fit and after each load: a read per step would wait for a GPU
        self._iteration: int | None = None
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_iteration", None))

    def current_iteration(self) -> int:
        if self._iteration is None:
            self._iteration = int(self.iteration)
        return self._iteration

    def check(self, model: VAE, datamodule: Any) -> None:
        if model.autoregressive:
            raise ConfigError(
                "objective=soft_intro needs differentiable generated images, which the autoregressive "
                f"{type(model.decoder).__name__} cannot give; use a non-autoregressive decoder "
                "(decoder=intro, conv or mlp)"
            )

    def configure_optimizers(self, model: VAE, optimizer: OptimizerFactory) -> list[torch.optim.Optimizer]:
        """[encoder side, decoder side]: each built by the configured optimiser factory (Adam, lr 2e-4 in the paper)."""
        return [optimizer(encoder_side(model)), optimizer(decoder_side(model))]

    def weights(self, model: VAE, step: int) -> Weights:
        return Weights(
            rec=self.weight(self.beta_rec, step),
            kl=self.weight(self.beta_kl, step),
            neg=self.weight(self.beta_neg, step),
            gamma_r=self.weight(self.gamma_r, step),
            scale=1.0 / math.prod(model.data_shape),
        )

    def recon_error(self, px: Distribution, target: Tensor) -> Tensor:
        """L_r = -log p(target|z) - D * recon_offset, per example (B,)."""
        return -px.log_prob(target) - self.recon_offset * math.prod(target.shape[1:])

    def encoder_loss(self, model: VAE, x: Tensor, eps: Tensor, w: Weights) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """L_E (module docstring); returns it, the z_x sample the decoder step reuses, and detached health signals."""
        with torch.no_grad():
            x_f = model.decode(eps).mean  # the decoder is frozen and eps is noise: no gradient path exists
        z_x, kl_real = latent(model, x)
        px = model.decode(z_x)
        x_r = px.mean
        rec_real = self.recon_error(px, x)
        z_r, kl_rec = latent(model, x_r.detach())
        z_f, kl_fake = latent(model, x_f)
        rec_rec = self.recon_error(model.decode(z_r), x_r)
        rec_fake = self.recon_error(model.decode(z_f), x_f)
        with torch.autocast(device_type=x.device.type, enabled=False):
            exp_rec = torch.exp(-2 * w.scale * (w.rec * rec_rec.float() + w.neg * kl_rec.float()))
            exp_fake = torch.exp(-2 * w.scale * (w.rec * rec_fake.float() + w.neg * kl_fake.float()))
            real = w.scale * (w.rec * rec_real.float().mean() + w.kl * kl_real.float().mean())
            loss = real + 0.25 * exp_rec.mean() + 0.25 * exp_fake.mean()
        nll = rec_real + self.recon_offset * math.prod(x.shape[1:])
        logs = {
            "loss_e": loss,
            "elbo": -(nll + kl_real).mean(),
            "rec": rec_real.mean(),
            "kl_real": kl_real.mean(),
            "kl_fake": kl_fake.mean(),
            "kl_rec": kl_rec.mean(),
            "diff_kl": kl_fake.mean() - kl_real.mean(),
            "exp_elbo_rec": exp_rec.mean(),
            "exp_elbo_fake": exp_fake.mean(),
        }
        return loss, z_x, {k: v.detach() for k, v in logs.items()}

    def decoder_loss(self, model: VAE, x: Tensor, eps: Tensor, z_x: Tensor, w: Weights) -> tuple[Tensor, Tensor]:
        """L_D (module docstring) with the encoder step's eps and z_x (from the encoder before its update)."""
        x_f = model.decode(eps).mean
        px = model.decode(z_x.detach())
        x_r = px.mean
        rec_real = self.recon_error(px, x)
        z_r, kl_rec = latent(model, x_r)
        z_f, kl_fake = latent(model, x_f)
        loss = w.scale * (w.rec * rec_real.mean() + 0.5 * w.kl * (kl_rec.mean() + kl_fake.mean()))
        if w.gamma_r:
            rec_rec = self.recon_error(model.decode(z_r.detach()), x_r.detach())
            rec_fake = self.recon_error(model.decode(z_f.detach()), x_f.detach())
            loss = loss + w.scale * 0.5 * w.gamma_r * w.rec * (rec_rec.mean() + rec_fake.mean())
        return loss, loss.detach()

    def vae_loss(self, model: VAE, x: Tensor, w: Weights) -> tuple[Tensor, dict[str, Tensor]]:
        """Warm-up: b_rec <L_r(x, z_x)> + b_kl <KL(x)>, unscaled, for both optimisers."""
        z_x, kl = latent(model, x)
        rec = self.recon_error(model.decode(z_x), x)
        loss = w.rec * rec.mean() + w.kl * kl.mean()
        nll = rec + self.recon_offset * math.prod(x.shape[1:])
        logs = {"loss_vae": loss, "elbo": -(nll + kl).mean(), "rec": rec.mean(), "kl_real": kl.mean()}
        return loss, {k: v.detach() for k, v in logs.items()}

    def training_step(self, module: VAEModule, x: Tensor) -> None:
        model = module.model
        opt_e, opt_d = module.optimizers()
        step = self.current_iteration()
        w = self.weights(model, step)
        if module.current_epoch < self.vae_epochs:
            loss, logs = self.vae_loss(model, x, w)
            self.stop_if_not_finite(module, "warm-up VAE", step, loss, logs, opt_e, opt_d)
            opt_e.zero_grad()
            opt_d.zero_grad()
            module.manual_backward(loss)
            opt_e.step()
            opt_d.step()
        else:
            eps = model.prior.sample(x.shape[0]).detach()  # shared by both steps
            with frozen(decoder_side(model)):
                loss_e, z_x, logs = self.encoder_loss(model, x, eps, w)
                self.stop_if_not_finite(module, "encoder", step, loss_e, logs, opt_e)
                opt_e.zero_grad()
                module.manual_backward(loss_e)
                opt_e.step()
            with frozen(encoder_side(model)):
                loss_d, logs["loss_d"] = self.decoder_loss(model, x, eps, z_x.detach(), w)
                self.stop_if_not_finite(module, "decoder", step, loss_d, logs, opt_d)
                opt_d.zero_grad()
                module.manual_backward(loss_d)
                opt_d.step()
        self.iteration += 1
        self._iteration = step + 1
        logs.update({"beta_neg": torch.tensor(w.neg), "beta_kl": torch.tensor(w.kl), "beta_rec": torch.tensor(w.rec)})
        module.log_metrics("train", logs, batch_size=x.shape[0])

    def stop_if_not_finite(
        self, module: VAEModule, phase: str, step: int, loss: Tensor, logs: dict[str, Tensor], *optimizers: Any
    ) -> None:
        """Before the update: on the CPU a non-finite loss raises here, naming the phase and the health signals; on
        a GPU the verdict stays on the device and the fused Adam skips the update (``VAEModule.check_finite``)."""

        def detail() -> str:
            signals = ", ".join(f"{k}={v.item():.4g}" for k, v in logs.items())
            return (
                f" (soft_intro: non-finite {phase} loss at iteration {step}, epoch {module.current_epoch}; "
                f"the update was not applied; {signals})"
            )

        # Lightning hands out LightningOptimizer wrappers; the skip flag goes on the torch optimiser inside
        module.check_finite(loss, *(getattr(opt, "optimizer", opt) for opt in optimizers), detail=detail)
