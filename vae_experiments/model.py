"""The VAE: holds the five parts and composes them; knows nothing about training."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, kl_divergence

from vae_experiments.contracts import conform, optional


@dataclass(eq=False, kw_only=True)
class Latent:
    """``k`` reparameterised samples of q(z|x) for each of ``B`` examples, and the KL per example (nats).

    ``z``: (k, B, d); ``kl``: (B,), KL(q(z|x) || p(z)) in closed form when torch's registry has one for the
    posterior/prior pair (``analytic_kl``), else the Monte-Carlo estimate mean_k [log q(z_k|x) - log p(z_k)] over the
    same samples. ``log_qz`` and ``log_pz`` (k, B) are computed on first use: a closed-form KL needs neither, and a
    posterior that samples and scores in one pass (``rsample_and_log_prob``) or the Monte-Carlo KL has them already.
    """

    q: Distribution
    z: Tensor
    kl: Tensor
    analytic_kl: bool
    log_prior: Callable[[Tensor], Tensor] = field(repr=False)
    known_log_qz: Tensor | None = field(default=None, repr=False)
    known_log_pz: Tensor | None = field(default=None, repr=False)

    @property
    def log_qz(self) -> Tensor:
        if self.known_log_qz is None:
            self.known_log_qz = self.q.log_prob(self.z)
        return self.known_log_qz

    @property
    def log_pz(self) -> Tensor:
        if self.known_log_pz is None:
            self.known_log_pz = self.log_prior(self.z)
        return self.known_log_pz


@dataclass(eq=False, kw_only=True)
class ELBOTerms(Latent):
    """A ``Latent`` and ``log_px_z`` (k, B): log p(x|z_k) for each sample, nats per example."""

    log_px_z: Tensor

    @property
    def log_weights(self) -> Tensor:
        """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), the importance weights of IWAE and the NLL."""
        return self.log_px_z + self.log_pz - self.log_qz

    @property
    def elbo(self) -> Tensor:
        """E_q[log p(x|z)] - KL(q || p), per example (B,), averaged over the k samples."""
        return self.log_px_z.mean(0) - self.kl


def closed_form_kl(q: Distribution, prior: nn.Module) -> Tensor | None:
    """KL(q || p) from torch's registry, or ``None`` when the pair has none (flow priors, IAF posteriors)."""
    p = prior.distribution()
    if p is None:
        return None
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def kl_per_dim(q: Distribution, prior: nn.Module) -> Tensor | None:
    """KL per latent dimension (B, d) when q and p both factorise over dimensions, else ``None``."""
    p = prior.distribution()
    if not (isinstance(q, Independent) and isinstance(p, Independent)):
        return None
    try:
        return kl_divergence(q.base_dist, p.base_dist)
    except NotImplementedError:
        return None


def posterior_mean(q: Distribution) -> Tensor:
    """E_q[z], or one sample where the posterior has no closed-form mean (IAF)."""
    try:
        return q.mean
    except NotImplementedError:
        return q.rsample()


class VAE(nn.Module):
    """encoder -> posterior q(z|x) -> prior p(z) -> decoder -> likelihood p(x|z)."""

    def __init__(
        self,
        encoder: nn.Module,
        posterior: nn.Module,
        prior: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        data_shape: Sequence[int],
        latent_dim: int,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.posterior = posterior
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        self.data_shape = tuple(data_shape)
        self.latent_dim = latent_dim
        # set by VAEModule.use_channels_last (trainer=gpu with convolutional nets): images are encoded as NHWC
        self.channels_last = False

    def compile_networks(self) -> None:
        """torch.compile the encoder and the decoder, the parts that hold the FLOPs. The VAE itself has no forward
        (objectives call ``terms``), so compiling it would compile nothing; posteriors, priors and likelihoods stay
        eager, as they return Distribution objects, on which dynamo breaks the graph."""
        self.encoder.compile()
        self.decoder.compile()

    @property
    def autoregressive(self) -> bool:
        return bool(self.decoder.autoregressive)

    def encode(self, x: Tensor) -> Distribution:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.posterior(self.encoder(x))

    def decode(self, z: Tensor, x: Tensor | None = None) -> Distribution:
        """p(x|z). An autoregressive decoder also needs ``x`` (teacher forcing, one parallel pass)."""
        if self.autoregressive:
            if x is None:
                raise ValueError("an autoregressive decoder needs x to evaluate p(x|z); use sample() to generate")
            return self.likelihood(self.decoder(z, x))
        return self.likelihood(self.decoder(z))

    def sample_posterior(self, q: Distribution, k: int) -> tuple[Tensor, Tensor | None]:
        """``k`` reparameterised samples (k, B, d), and their log q (k, B) when the posterior gives it in the same pass
        (``rsample_and_log_prob``), else ``None``."""
        joint = optional(q, "rsample_and_log_prob")
        if joint is not None:
            return joint((k,))
        return q.rsample((k,)), None

    def log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) for ``z`` of shape (k, B, d) and ``x`` (B, ...): (k, B), one decoder pass over k*B rows.

        Uses the likelihood's ``log_likelihood(params, x)`` when it has one (no Distribution objects, ``x`` broadcast
        over the samples, not copied); otherwise, and for autoregressive decoders, the Distribution's ``log_prob``.
        """
        k, batch = z.shape[:2]
        flat_z = z.reshape(k * batch, -1)
        fast = optional(self.likelihood, "log_likelihood")
        if fast is not None and not self.autoregressive:
            params = self.decoder(flat_z)
            return fast(params.view(k, batch, *params.shape[1:]), x)
        flat_x = x.expand(k, *x.shape).reshape(k * batch, *x.shape[1:])
        return self.decode(flat_z, flat_x).log_prob(flat_x).view(k, batch)

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) for ``z`` of shape (k, B, d): (k, B)."""
        return self.prior.log_prob(z.reshape(-1, z.shape[-1])).view(z.shape[:2])

    def latent(self, x: Tensor, k: int = 1, q: Distribution | None = None) -> Latent:
        """q(z|x) (``q`` when given), ``k`` samples and the KL per example: the one place that chooses between the
        closed-form KL and its Monte-Carlo estimate (``Latent``)."""
        q = self.encode(x) if q is None else q
        z, log_qz = self.sample_posterior(q, k)
        kl = closed_form_kl(q, self.prior)
        analytic, log_pz = kl is not None, None
        if kl is None:
            log_qz = q.log_prob(z) if log_qz is None else log_qz
            log_pz = self.log_prior(z)
            kl = (log_qz - log_pz).mean(0)
        return Latent(
            q=q, z=z, kl=kl, analytic_kl=analytic, log_prior=self.log_prior, known_log_qz=log_qz, known_log_pz=log_pz
        )

    def terms(self, x: Tensor, k: int = 1, q: Distribution | None = None) -> ELBOTerms:
        """Everything an objective or an estimator needs, for ``k`` samples per example (k*B decoder rows)."""
        latent = self.latent(x, k, q)
        return ELBOTerms(**vars(latent), log_px_z=self.log_likelihood(latent.z, x))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> Tensor:
        """``n`` images from the model: z ~ p(z), then the likelihood's mean (``mean``) or a draw from p(x|z).

        An autoregressive decoder always draws pixel by pixel (its mean image is not defined).
        """
        z = self.prior.sample(n)
        if self.autoregressive:
            return self.decoder.sample(z, self.likelihood)
        px = self.decode(z)
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: Tensor, mean: bool = True) -> Tensor:
        z = posterior_mean(self.encode(x))
        if self.autoregressive:
            return self.decoder.sample(z, self.likelihood)
        px = self.decode(z)
        return px.mean if mean else px.sample()


def build_model(
    parts: dict[str, Any],
    data_shape: Sequence[int],
    latent_dim: int,
) -> VAE:
    """Build the five parts from partially-instantiated Hydra nodes, supplying the shape-dependent arguments."""
    if latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
    data_shape = tuple(data_shape)
    likelihood = parts["likelihood"]()
    out_shape = (likelihood.num_params(data_shape[0]), *data_shape[1:])
    encoder = parts["encoder"](in_shape=data_shape)
    posterior = parts["posterior"](in_features=encoder.out_features, latent_dim=latent_dim)
    prior = parts["prior"](latent_dim=latent_dim)
    decoder = parts["decoder"](latent_dim=latent_dim, out_shape=out_shape, data_shape=data_shape)
    conform({"encoder": encoder, "posterior": posterior, "prior": prior, "decoder": decoder, "likelihood": likelihood})
    init_output_layer = optional(likelihood, "init_output_layer")
    output_layer = optional(decoder, "output_layer")
    if init_output_layer is not None and output_layer is not None:
        init_output_layer(output_layer)
    return VAE(encoder, posterior, prior, decoder, likelihood, data_shape, latent_dim)
