"""The small, duck-typed contracts between the six parts of a VAE run.

    dataset -> encoder -> posterior q(z|x) -> prior p(z) -> decoder -> likelihood p(x|z)     (+ objective)

Shapes: ``x`` is ``(B, *data_shape)`` with ``data_shape = (C, H, W)`` for images (``(D,)`` for vector data such as
the 2-D toys), values in [0, 1]. ``z`` is ``(B, latent_dim)``. Every log-density is in nats *per example*, summed
over all pixels / latent dimensions: shape ``(B,)``.

Each part is built by ``vae_experiments.model.build_model`` from a Hydra node with ``_partial_: true``; the builder
supplies the shape-dependent arguments named below, the config supplies the rest.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor
from torch.distributions import Distribution


@runtime_checkable
class Encoder(Protocol):
    """``encoder(in_shape=data_shape, **cfg)``; ``forward(x) -> h`` of shape ``(B, out_features)``."""

    out_features: int

    def __call__(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class Posterior(Protocol):
    """``posterior(in_features=encoder.out_features, latent_dim=d, **cfg)``; ``forward(h) -> q``.

    ``q`` is a ``torch.distributions.Distribution`` with ``batch_shape (B,)``, ``event_shape (d,)``, ``rsample`` and
    ``log_prob``. A closed-form KL to the prior is found through ``torch.distributions.kl_divergence``
    (register it with ``torch.distributions.kl.register_kl``); without one the objective uses the Monte-Carlo estimate
    ``log q(z|x) - log p(z)``.
    """

    def __call__(self, h: Tensor) -> Distribution: ...


@runtime_checkable
class Prior(Protocol):
    """``prior(latent_dim=d, **cfg)``, an ``nn.Module`` (it may be learned).

    ``log_prob(z) -> (B,)``; ``sample(n) -> (n, d)``. ``distribution()`` returns a torch ``Distribution`` with
    ``event_shape (d,)`` when the prior has one that ``kl_divergence`` may know (the standard normal); a learned flow
    prior returns ``None`` and the KL is estimated by Monte Carlo.
    """

    def log_prob(self, z: Tensor) -> Tensor: ...

    def sample(self, n: int) -> Tensor: ...

    def distribution(self) -> Distribution | None: ...


@runtime_checkable
class Decoder(Protocol):
    """``decoder(latent_dim=d, out_shape=(P, H, W), data_shape=(C, H, W), **cfg)``; ``P = likelihood.num_params(C)``.

    Non-autoregressive (``autoregressive = False``): ``forward(z) -> params (B, P, H, W)``.
    Autoregressive (``autoregressive = True``, e.g. PixelCNN): ``forward(z, x) -> params`` with teacher forcing (one
    parallel pass), and ``sample(z, likelihood) -> x`` generating pixel by pixel, batched over ``B``.
    """

    autoregressive: bool

    def __call__(self, z: Tensor, *args: Tensor) -> Tensor: ...


@runtime_checkable
class Likelihood(Protocol):
    """``likelihood(**cfg)``, an ``nn.Module`` (it may hold parameters: a learned sigma).

    ``num_params(channels) -> P``: how many output channels the decoder must produce per pixel row.
    ``forward(params) -> p(x|z)``: a ``Distribution`` whose ``event_shape`` is the data shape, with ``log_prob(x)``
    of shape ``(B,)`` (summed over all values), ``sample()`` and ``mean`` in data space.
    ``levels``: the number of values per pixel over which ``log_prob`` is a probability mass (2 for Bernoulli, 256
    for an 8-bit discretised logistic), ``None`` for densities. Bits/dim is reported when it equals the data's
    ``levels`` (so a Bernoulli on grey levels, as the rho-VAE paper uses it, reports none).
    """

    levels: int | None

    def num_params(self, channels: int) -> int: ...

    def __call__(self, params: Tensor) -> Distribution: ...


def check_event(dist: Distribution, batch: int, event: tuple[int, ...]) -> None:
    """Raise when a part returns a distribution of the wrong shape (used by tests and by the pre-flight check)."""
    if tuple(dist.batch_shape) != (batch,) or tuple(dist.event_shape) != tuple(event):
        raise ValueError(
            f"expected batch_shape ({batch},) and event_shape {tuple(event)}, "
            f"got {tuple(dist.batch_shape)} and {tuple(dist.event_shape)}"
        )
