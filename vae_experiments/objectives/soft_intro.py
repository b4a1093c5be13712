"""Soft-IntroVAE (Daniel & Tamar, CVPR 2021): the encoder is trained to tell real data from generated data by the
ELBO, the decoder to fool it, with a soft exponential penalty instead of IntroVAE's hard margin.

The exact training step of the authors' code (docs/soft_intro_vae.md#training-step), with two optimisers stepped by
the objective itself. Notation: s = 1 / D (D = C*H*W values per example; 1/3072 for CIFAR-10, 1/2 for the 2-D toys),
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
reaches the encoder through z_x; the decoder step's encodings of ``x_r``, ``x_f`` pass
gradients through the frozen encoder into the decoder, and ``L_r(x_r, sg(z_r))`` uses detached targets. During the
first ``vae_epochs`` epochs both optimisers take the unscaled VAE loss ``b_rec <L_r> + b_kl <KL>`` instead.

Where the nets have no layer that mixes examples (no BatchNorm in training mode: the MLPs of the 2-D toys), images
that go through the same frozen network are batched into one pass (x_r with x_f into the encoder, eps with z_x and
z_r with z_f into the decoder): the same math in fewer kernels. With BatchNorm, batch statistics would change, so
each batch goes through on its own, as in the authors' code.

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
decoder side is decoder + likelihood parameters (a learned sigma). Each step back-propagates into its own side only
(``backward(inputs=...)``): the other side gets no gradient and autograd computes none for it, as when the authors
switch its ``requires_grad`` off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vae_experiments.errors import ConfigError
from vae_experiments.model import VAE
from vae_experiments.objectives.base import Objective, OptimizerFactory, StepContext, StepOutput, logged
from vae_experiments.schedules import Schedule


def encoder_side(model: VAE) -> list[nn.Parameter]:
    """The trainable parameters the encoder step updates: encoder, posterior head, prior."""
    parts = (model.encoder, model.posterior, model.prior)
    return [p for part in parts for p in part.parameters() if p.requires_grad]


def decoder_side(model: VAE) -> list[nn.Parameter]:
    """The trainable parameters the decoder step updates: decoder, likelihood."""
    return [p for part in (model.decoder, model.likelihood) for p in part.parameters() if p.requires_grad]


def mixes_examples(net: nn.Module) -> bool:
    """Whether a pass of ``net`` couples the examples of a batch (BatchNorm in training mode)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules())


def encoded(model: VAE, xs: Sequence[Tensor], together: bool) -> list[tuple[Tensor, Tensor]]:
    """For each batch in ``xs``: one reparameterised z ~ q(z|x) (B, d) and KL(q(z|x) || p(z)) per example (B,);
    one encoder pass over their concatenation when ``together``."""
    if not together:
        return [z_and_kl(model, x) for x in xs]
    z, kl = z_and_kl(model, torch.cat(list(xs)))
    sizes = [x.shape[0] for x in xs]
    return list(zip(z.split(sizes), kl.split(sizes), strict=True))


def decoded(model: VAE, zs: Sequence[Tensor], together: bool) -> list[Distribution]:
    """p(x|z) for each batch of latents in ``zs``; one decoder pass over their concatenation when ``together``."""
    if not together:
        return [model.decode(z) for z in zs]
    params = model.decoder(torch.cat(list(zs)))
    return [model.likelihood(p) for p in params.split([z.shape[0] for z in zs])]


def z_and_kl(model: VAE, x: Tensor) -> tuple[Tensor, Tensor]:
    latent = model.latent(x)
    return latent.z[0], latent.kl


class SoftIntroVAE(Objective):
    """``objective=soft_intro``: two Adam optimisers, an encoder step then a decoder step on every batch.

    ``beta_rec``, ``beta_kl``, ``beta_neg``, ``gamma_r`` may each be a schedule of the iteration (training batches,
    ``global_step // 2``, so a resumed run continues it). ``recon_offset``: nats per data value subtracted from
    -log p(x|z) (see the module docstring). A non-finite loss stops the run without its update being applied
    (``ctx.guard_finite``: at once on the CPU; on a GPU the fused Adam skips it on the device and the run stops at
    the next check).
    """

    automatic_optimization = False
    optimizer_steps_per_batch = 2
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
        self.scheduled("beta_rec", beta_rec)
        self.scheduled("beta_kl", beta_kl)
        self.scheduled("beta_neg", beta_neg)
        self.scheduled("gamma_r", gamma_r)
        # the gamma_r terms are part of the step when gamma_r is set: decided once, never on a tensor's value
        self.uses_gamma_r = callable(gamma_r) or gamma_r != 0
        self.vae_epochs = vae_epochs
        self.recon_offset = recon_offset

    def refuse_unsupported(self, model: VAE, datamodule: Any) -> None:
        if model.autoregressive:
            raise ConfigError(
                "objective=soft_intro needs differentiable generated images, which the autoregressive "
                f"{type(model.decoder).__name__} cannot give; use a non-autoregressive decoder "
                "(decoder=intro, conv or mlp)"
            )

    def configure_optimizers(self, model: VAE, optimizer: OptimizerFactory) -> list[torch.optim.Optimizer]:
        """[encoder side, decoder side]: each built by the configured optimiser factory (Adam, lr 2e-4 in the paper)."""
        return [optimizer(encoder_side(model)), optimizer(decoder_side(model))]

    def step_variant(self, epoch: int) -> Hashable:
        return epoch < self.vae_epochs

    def recon_error(self, px: Distribution, target: Tensor) -> Tensor:
        """L_r = -log p(target|z) - D * recon_offset, per example (B,)."""
        return -px.log_prob(target) - self.recon_offset * math.prod(target.shape[1:])

    def encoder_loss(
        self, model: VAE, x: Tensor, eps: Tensor, together: bool
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """L_E (module docstring); returns it, the z_x sample the decoder step reuses, and detached health signals."""
        s = 1.0 / math.prod(model.data_shape)
        z_x, kl_real = z_and_kl(model, x)
        if together:
            # one decoder pass for eps and z_x; the decoder is frozen, so the eps rows add no gradient to anything
            px_f, px = decoded(model, [eps, z_x], together=True)
            x_f = px_f.mean.detach()
        else:
            with torch.no_grad():
                x_f = model.decode(eps).mean  # the decoder is frozen and eps is noise: no gradient path exists
            px = model.decode(z_x)
        x_r = px.mean
        rec_real = self.recon_error(px, x)
        (z_r, kl_rec), (z_f, kl_fake) = encoded(model, [x_r.detach(), x_f], together)
        px_rr, px_rf = decoded(model, [z_r, z_f], together)
        rec_rec = self.recon_error(px_rr, x_r)
        rec_fake = self.recon_error(px_rf, x_f)
        with torch.autocast(device_type=x.device.type, enabled=False):
            exp_rec = torch.exp(-2 * s * (self.beta_rec * rec_rec.float() + self.beta_neg * kl_rec.float()))
            exp_fake = torch.exp(-2 * s * (self.beta_rec * rec_fake.float() + self.beta_neg * kl_fake.float()))
            real = s * (self.beta_rec * rec_real.float().mean() + self.beta_kl * kl_real.float().mean())
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

    def decoder_loss(self, model: VAE, x: Tensor, eps: Tensor, z_x: Tensor, together: bool) -> Tensor:
        """L_D (module docstring) with the encoder step's eps and z_x (from the encoder before its update)."""
        s = 1.0 / math.prod(model.data_shape)
        px_f, px = decoded(model, [eps, z_x.detach()], together)
        x_f, x_r = px_f.mean, px.mean
        rec_real = self.recon_error(px, x)
        (z_r, kl_rec), (z_f, kl_fake) = encoded(model, [x_r, x_f], together)
        loss = s * (self.beta_rec * rec_real.mean() + 0.5 * self.beta_kl * (kl_rec.mean() + kl_fake.mean()))
        if self.uses_gamma_r:
            px_rr, px_rf = decoded(model, [z_r.detach(), z_f.detach()], together)
            rec_rec = self.recon_error(px_rr, x_r.detach())
            rec_fake = self.recon_error(px_rf, x_f.detach())
            loss = loss + s * 0.5 * self.gamma_r * self.beta_rec * (rec_rec.mean() + rec_fake.mean())
        return loss

    def vae_loss(self, model: VAE, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Warm-up: b_rec <L_r(x, z_x)> + b_kl <KL(x)>, unscaled, for both optimisers."""
        z_x, kl = z_and_kl(model, x)
        rec = self.recon_error(model.decode(z_x), x)
        loss = self.beta_rec * rec.mean() + self.beta_kl * kl.mean()
        nll = rec + self.recon_offset * math.prod(x.shape[1:])
        logs = {"loss_vae": loss, "elbo": -(nll + kl).mean(), "rec": rec.mean(), "kl_real": kl.mean()}
        return loss, {k: v.detach() for k, v in logs.items()}

    def training_step(self, ctx: StepContext, x: Tensor) -> StepOutput:
        model = ctx.model
        opt_e, opt_d = ctx.optimizers
        if ctx.epoch < self.vae_epochs:
            loss, logs = self.vae_loss(model, x)
            ctx.guard_finite(loss, opt_e, opt_d, detail=self._detail(ctx, "warm-up VAE", logs))
            opt_e.zero_grad()
            opt_d.zero_grad()
            ctx.backward(loss)
            opt_e.step()
            opt_d.step()
        else:
            together = not (mixes_examples(model.encoder) or mixes_examples(model.decoder))
            eps = model.prior.sample(x.shape[0]).detach()  # shared by both steps
            loss_e, z_x, logs = self.encoder_loss(model, x, eps, together)
            ctx.guard_finite(loss_e, opt_e, detail=self._detail(ctx, "encoder", logs))
            opt_e.zero_grad()
            ctx.backward(loss_e, inputs=encoder_side(model))
            opt_e.step()
            loss_d = self.decoder_loss(model, x, eps, z_x.detach(), together)
            logs["loss_d"] = loss_d.detach()
            ctx.guard_finite(loss_d, opt_d, detail=self._detail(ctx, "decoder", logs))
            opt_d.zero_grad()
            ctx.backward(loss_d, inputs=decoder_side(model))
            opt_d.step()
        logs.update(beta_neg=logged(self.beta_neg), beta_kl=logged(self.beta_kl), beta_rec=logged(self.beta_rec))
        return StepOutput(None, logs)

    def _detail(self, ctx: StepContext, phase: str, logs: dict[str, Tensor]) -> Callable[[], str]:
        """What the non-finite guard adds to its message, read only when it stops the run."""

        def detail() -> str:
            signals = ", ".join(f"{k}={v.item():.4g}" for k, v in logs.items())
            return (
                f" (soft_intro: non-finite {phase} loss at iteration {ctx.global_step // 2}, epoch {ctx.epoch}; "
                f"the update was not applied; {signals})"
            )

        return detail
