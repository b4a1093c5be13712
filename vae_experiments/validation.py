"""Checks that run before training: every problem becomes one ``ConfigError`` line naming the fix.

Three layers: (1) building each part turns its constructor's ``ValueError`` into ``GROUP: message``, and the built
parts are held against their contracts (``vae_experiments.contracts``); (2) rules about combinations (data levels vs
likelihood, autoregressive decoders vs joint likelihoods, and any part's own ``refuse_unsupported`` hook); (3) a
pre-flight forward pass on two random examples of the data's shape, which catches shape mismatches between encoder,
posterior, decoder and likelihood in milliseconds instead of after the first epoch.
"""

from __future__ import annotations

from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from vae_experiments.contracts import optional
from vae_experiments.errors import ConfigError


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def one_line(exc: BaseException) -> str:
    text = str(_root_cause(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__


def build_node(node: DictConfig | Any, group: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with errors reported as ``GROUP: first line of the cause``."""
    if node is None:
        raise ConfigError(f"{group} is not set: choose one with {group}=NAME")
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except ConfigError:
        raise
    except (InstantiationException, ValueError, TypeError) as exc:
        cause = _root_cause(exc)
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"{group}: {one_line(exc)}") from None


def build_part(factory: Any, group: str, **kwargs: Any) -> Any:
    """Call a partially-instantiated part with its shape arguments, reporting errors as ``GROUP: message``."""
    try:
        return factory(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"{group}: {one_line(exc)}") from None


def validate_combination(model: Any, datamodule: Any, objective: Any) -> None:
    """Rules no single part can check alone, then each part's own ``refuse_unsupported(model, datamodule)`` hook."""
    likelihood_levels = model.likelihood.levels
    data_levels = datamodule.levels
    name = type(model.likelihood).__name__
    if likelihood_levels == 2 and len(model.data_shape) == 3 and model.data_shape[0] == 3 and data_levels != 2:
        raise ConfigError(
            f"{name} on RGB data with {data_levels} levels: a Bernoulli needs binary data; "
            "use likelihood=discretized_logistic (8-bit) or likelihood=gaussian"
        )
    if likelihood_levels not in (None, 2) and data_levels != likelihood_levels:
        raise ConfigError(
            f"{name} is a mass over {likelihood_levels} levels but the data have {data_levels}; "
            "use 8-bit data (dataset.binarize=none) or likelihood=bernoulli / likelihood=gaussian"
        )
    if model.autoregressive and not optional(model.likelihood, "factorized"):
        raise ConfigError(
            f"{name} is one joint distribution over all pixels and cannot be sampled pixel by pixel by "
            f"{type(model.decoder).__name__}; use a non-autoregressive decoder (decoder=conv, resnet or mlp)"
        )
    for part in (
        model.encoder,
        model.posterior,
        model.prior,
        model.decoder,
        model.likelihood,
        objective,
    ):
        refuse_unsupported = optional(part, "refuse_unsupported")
        if refuse_unsupported is not None:
            refuse_unsupported(model, datamodule)


def preflight(model: Any, objective: Any) -> Any:
    """One forward pass and loss on two random examples: shape errors surface before any data are read.

    Returns the ``ELBOTerms`` of that pass (``describe`` reads how the KL is computed from them)."""
    import torch  # here, not at the top: the sweep summary reads ``one_line`` in a process that never loads torch

    x = torch.rand(2, *model.data_shape)
    if model.likelihood.levels == 2:
        x = x.round()
    was_training = model.training
    model.eval()  # BatchNorm must not learn from random inputs
    try:
        with torch.no_grad():
            terms = model.terms(x, 1)
            if objective.automatic_optimization:
                objective.loss(model, x)
    except ConfigError:
        raise
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ConfigError(
            f"the parts do not fit together on data of shape {model.data_shape}: {one_line(exc)} "
            "(check that the decoder and likelihood agree on channels, or pick matching encoder/decoder options)"
        ) from None
    finally:
        model.train(was_training)
    if not torch.isfinite(terms.elbo).all():
        raise ConfigError("the ELBO is not finite at initialisation; check the likelihood's scale settings")
    return terms


def describe(model: Any, terms: Any) -> dict[str, str]:
    """What a run must state about itself (printed at start, in the hyper-parameters and in metrics.json):
    ``kl_estimator`` ``analytic`` (closed form) or ``mc`` (the single-sample estimate log q(z|x) - log p(z), when the
    posterior/prior pair has no closed form: an AF prior, an IAF posterior), and an autoregressive decoder's
    ``decoder/receptive_field`` ("A x B": A wide, B tall above the pixel, (A - 1) / 2 to its left)."""
    info = {"kl_estimator": "analytic" if terms.analytic_kl else "mc"}
    receptive_field = optional(model.decoder, "receptive_field")
    if receptive_field is not None:
        info["decoder/receptive_field"] = str(receptive_field)
    return info
