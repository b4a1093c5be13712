"""The contracts between the six parts of a VAE run, checked once when a run is built (``conform``).

    dataset -> encoder -> posterior q(z|x) -> prior p(z) -> decoder -> likelihood p(x|z)     (+ objective)

Shapes: ``x`` is ``(B, *data_shape)`` with ``data_shape = (C, H, W)`` for images (``(D,)`` for vector data such as
the 2-D toys), values in [0, 1]. ``z`` is ``(B, latent_dim)``. Every log-density is in nats *per example*, summed
over all pixels / latent dimensions: shape ``(B,)``.

Each part is built by ``vae_experiments.model.build_model`` from a Hydra node with ``_partial_: true``; the builder
supplies the shape-dependent arguments named below, the config supplies the rest. The Protocols say what every part
of a kind must have; ``OPTIONAL`` declares the hooks a part may add, with the value the runner assumes when it has
not; ``optional(part, name)`` is how the runner reads one. A new part is a class with the required members (and any
hooks it needs) and a YAML node in its config group: nothing else changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: the config checks import this module before torch is needed
    from torch import Tensor
    from torch.distributions import Distribution

from vae_experiments.errors import ConfigError


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


# Optional hooks: (what the hook is, the value assumed when a part has none).
OPTIONAL: dict[str, dict[str, tuple[str, Any]]] = {
    "any": {
        "refuse_unsupported": (
            "refuse_unsupported(model, datamodule): raise ConfigError for a combination the part cannot run",
            None,
        ),
        "valid_bound": ("False when a reference-faithful mode makes the ELBO and NLL no bounds", True),
    },
    "posterior": {
        "rsample_and_log_prob": (
            "on the q(z|x) it returns: rsample_and_log_prob(shape) -> (z, log q(z|x)) in one pass",
            None,
        ),
    },
    "prior": {},
    "decoder": {
        "output_layer": ("the final nn.Conv2d, which a likelihood may initialise (init_output_layer)", None),
        "receptive_field": ("an autoregressive decoder's receptive field, reported with the run", None),
    },
    "likelihood": {
        "log_likelihood": (
            "log_likelihood(params (k, B, P, ...), x (B, ...)) -> (k, B): log p(x|z) without Distribution objects",
            None,
        ),
        "factorized": ("False for one joint density over all values (no autoregressive decoder)", True),
        "init_output_layer": (
            "init_output_layer(conv): set up the decoder's output_layer for this likelihood",
            None,
        ),
        "non_finite_advice": ("what to change when this likelihood makes the training loss non-finite", None),
        "detach_spread": ("detach_spread(params): params with all but the mean cut from the graph", None),
    },
}
PROTOCOLS: dict[str, type] = {
    "encoder": Encoder,
    "posterior": Posterior,
    "prior": Prior,
    "decoder": Decoder,
    "likelihood": Likelihood,
}


def optional(part: object, name: str) -> Any:
    """The optional hook ``name`` of ``part`` (declared in ``OPTIONAL``), or its declared default."""
    for hooks in OPTIONAL.values():
        if name in hooks:
            return getattr(part, name, hooks[name][1])
    raise KeyError(f"{name} is not a declared optional hook")


def conform(parts: dict[str, object]) -> None:
    """Check each built part against its Protocol: one ConfigError line naming the group and what is missing. Runs
    once per run, before training; after it the runner reads required members directly and optional hooks through
    ``optional``."""
    for group, part in parts.items():
        missing = [name for name in _members(PROTOCOLS[group]) if not hasattr(part, name)]
        if missing:
            raise ConfigError(
                f"{group}: {type(part).__name__} lacks {', '.join(missing)}, which every {group} must have "
                "(vae_experiments/contracts.py)"
            )
    decoder = parts["decoder"]
    if decoder.autoregressive and not callable(getattr(decoder, "sample", None)):  # type: ignore[attr-defined]
        raise ConfigError(
            f"decoder: the autoregressive {type(decoder).__name__} lacks sample(z, likelihood), which generation needs"
        )


def _members(protocol: type) -> list[str]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    if "__call__" in vars(protocol):
        names.add("__call__")
    return sorted(names)


def require_event_shape(dist: Distribution, batch: int, event: tuple[int, ...]) -> None:
    """Raise when a part returns a distribution of the wrong shape (the part tests use it)."""
    if tuple(dist.batch_shape) != (batch,) or tuple(dist.event_shape) != tuple(event):
        raise ValueError(
            f"expected batch_shape ({batch},) and event_shape {tuple(event)}, "
            f"got {tuple(dist.batch_shape)} and {tuple(dist.event_shape)}"
        )
