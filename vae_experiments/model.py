"""The VAE: holds the five parts and composes them; knows nothing about training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, kl_divergence


@dataclass
class ELBOTerms:
    """Per-sample pieces of the bound for ``k`` posterior samples of each of ``B`` examples (nats per example).

    ``log_px_z``, ``log_qz``, ``log_pz``: (k, B). ``kl``: (B,) in closed form when one is registered for the
    posterior/prior pair (``analytic_kl``), else the Monte-Carlo estimate ``log q(z|x) - log p(z)`` of shape (k, B).
    """

    z: Tensor
    q: Distribution
    log_px_z: Tensor
    log_qz: Tensor
    log_pz: Tensor
    kl: Tensor
    analytic_kl: bool

    @property
    def log_weights(self) -> Tensor:
        """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), the importance weights of IWAE and the NLL."""
        return self.log_px_z + self.log_pz - self.log_qz

    @property
    def elbo(self) -> Tensor:
        """E_q[log p(x|z)] - KL(q || p), per example (B,), averaged over the k samples."""
        return self.log_px_z.mean(0) - (self.kl if self.analytic_kl else self.kl.mean(0))


def closed_form_kl(q: Distribution, prior: nn.Module) -> Tensor | None:
    """KL(q || p) from torch's registry, or ``None`` when the pair has none (flow priors, IAF posteriors)."""
    p = prior.distribution() if hasattr(prior, "distribution") else None
    if p is None:
        return None
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def kl_per_dim(q: Distribution, prior: nn.Module) -> Tensor | None:
    """KL per latent dimension (B, d) when q and p both factorise over dimensions, else ``None``."""
    p = prior.distribution() if hasattr(prior, "distribution") else None
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
        return bool(getattr(self.decoder, "autoregressive", False))

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

    def sample_posterior(self, q: Distribution, k: int) -> tuple[Tensor, Tensor]:
        """``k`` reparameterised samples (k, B, d) and their log q (k, B), in one pass where the posterior allows."""
        if hasattr(q, "rsample_and_log_prob"):
            return q.rsample_and_log_prob((k,))
        z = q.rsample((k,))
        return z, q.log_prob(z)

    def log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) for ``z`` of shape (k, B, d) and ``x`` (B, ...): (k, B), one decoder pass over k*B rows.

        Uses the likelihood's ``log_likelihood(params, x)`` when it has one (no Distribution objects, ``x`` broadcast
        over the samples, not copied); otherwise, and for autoregressive decoders, the Distribution's ``log_prob``.
        """
        k, batch = z.shape[:2]
        flat_z = z.reshape(k * batch, -1)
        fast = getattr(self.likelihood, "log_likelihood", None)
        if fast is not None and not self.autoregressive:
            params = self.decoder(flat_z)
            return fast(params.view(k, batch, *params.shape[1:]), x)
        flat_x = x.expand(k, *x.shape).reshape(k * batch, *x.shape[1:])
        return self.decode(flat_z, flat_x).log_prob(flat_x).view(k, batch)

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) for ``z`` of shape (k, B, d): (k, B)."""
        return self.prior.log_prob(z.reshape(-1, z.shape[-1])).view(z.shape[:2])

    def terms(self, x: Tensor, k: int = 1, q: Distribution | None = None) -> ELBOTerms:
        """Everything an objective or an estimator needs, for ``k`` samples per example (k*B decoder rows)."""
        q = self.encode(x) if q is None else q
        z, log_qz = self.sample_posterior(q, k)
        log_px_z = self.log_likelihood(z, x)
        log_pz = self.log_prior(z)
        kl = closed_form_kl(q, self.prior)
        analytic = kl is not None
        return ELBOTerms(z, q, log_px_z, log_qz, log_pz, kl if analytic else log_qz - log_pz, analytic)

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
    if hasattr(likelihood, "init_output_layer") and hasattr(decoder, "output_layer"):
        likelihood.init_output_layer(decoder.output_layer)
    return VAE(encoder, posterior, prior, decoder, likelihood, data_shape, latent_dim)
