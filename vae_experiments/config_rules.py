"""What each option accepts: ``RULES`` maps a dotted key (``fnmatch`` patterns) to a range, a list of choices or a
size rule, read by ``config_checks`` (which also takes a rule's kind of number as the key's type)."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

from omegaconf import ListConfig


def as_yaml(value: Any) -> str:
    """A value as it is written on the command line (``true``, ``null``, ``0.001``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


@dataclass(frozen=True)
class Number:
    """A number in ``[low, high]`` (``open_low``: ``> low``); ``integer``: an int; ``nullable``: null allowed;
    ``also``: other values allowed (``-1`` for "no limit")."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    integer: bool = False
    nullable: bool = False
    also: tuple[Any, ...] = ()

    def want(self) -> str:
        kind = "an integer" if self.integer else "a number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.open_low else '>='} {as_yaml(self.low)}")
        if self.high is not None:
            bounds.append(f"<= {as_yaml(self.high)}")
        text = f"{kind} {' and '.join(bounds)}".strip()
        extras = [*(str(a) for a in self.also), *(["null"] if self.nullable else [])]
        return f"{text} (or {', '.join(extras)})" if extras else text

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if any(value == a and type(value) is type(a) for a in self.also):
            return True
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if (self.integer and not isinstance(value, int)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (YAML spellings: ``true``, ``false``, strings, numbers)."""

    options: tuple[Any, ...]

    def want(self) -> str:
        return "one of " + ", ".join(as_yaml(o) for o in self.options)

    def accepts(self, value: Any) -> bool:
        return any(value == o and type(value) is type(o) for o in self.options)


@dataclass(frozen=True)
class Sizes:
    """An integer >= ``low`` or a list of them (layer widths, channels); ``list_only``: a list."""

    low: int = 1
    nullable: bool = False
    list_only: bool = False

    def want(self) -> str:
        kind = f"a list of integers >= {self.low}" if self.list_only else f"an integer >= {self.low} or a list of them"
        return kind + (" (or null)" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.list_only and not isinstance(value, ListConfig | list):
            return False
        values = list(value) if isinstance(value, ListConfig | list) else [value]
        return all(isinstance(v, int) and not isinstance(v, bool) and v >= self.low for v in values)


@dataclass(frozen=True)
class AnyOf:
    """What any of ``rules`` accepts."""

    rules: tuple[Number | Choice | Sizes, ...]

    def want(self) -> str:
        return " or ".join(rule.want() for rule in self.rules)

    def accepts(self, value: Any) -> bool:
        return any(rule.accepts(value) for rule in self.rules)


def Int(low: int | None = None, **kw: Any) -> Number:
    return Number(low, integer=True, **kw)


BOOL = Choice((True, False))
TRUE_FALSE_AUTO = Choice((True, False, "auto"))
POSITIVE = Number(0, open_low=True)
NON_NEGATIVE = Number(0)
FINITE = Number()
PROBABILITY_OPEN = Number(0, 1, open_low=True)

# key (fnmatch pattern) -> rule; the first matching pattern decides
RULES: dict[str, Number | Choice | Sizes | AnyOf] = {
    # top level
    "seed": Int(0, high=2**32 - 1),
    "latent_dim": Int(1),
    "resume": BOOL,
    "test": BOOL,
    "compile": BOOL,
    "capture": BOOL,
    "channels_last": TRUE_FALSE_AUTO,
    # evaluation
    "eval.nll_samples": Int(1),
    "eval.elbo_samples": Int(1),
    "eval.nll_max_rows": Int(1),
    "eval.toy2d.enabled": BOOL,
    "eval.toy2d.half_width": POSITIVE,
    "eval.toy2d.n_samples": Int(1),
    "eval.toy2d.bins": Int(2),
    "eval.toy2d.grid_points": Int(1),
    "eval.fid.enabled": BOOL,
    "eval.fid.n": Int(2),
    "eval.fid.n_reference": Int(2, nullable=True),
    "eval.fid.reference_split": Choice(("train", "val", "test")),
    "eval.fid.batch_size": Int(1),
    "eval.fid.model_mode": Choice(("eval", "train")),
    # data
    "dataset.batch_size": Int(1),
    "dataset.eval_batch_size": Int(1, nullable=True),
    "dataset.num_workers": Int(0),
    "dataset.val_size": Int(1),
    "dataset.test_size": Int(1),
    "dataset.n_train": Int(1),
    "dataset.n_test": Int(1),
    "dataset.train_subset": Int(1, nullable=True),
    "dataset.subset": Int(1, nullable=True),
    "dataset.image_size": Int(1, nullable=True),
    "dataset.seed": Int(0, high=2**32 - 1),
    "dataset.binarize": Choice(("none", "static", "dynamic")),
    "dataset.pin_memory": TRUE_FALSE_AUTO,
    "dataset.on_device": TRUE_FALSE_AUTO,
    "dataset.download": BOOL,
    "dataset.hflip": BOOL,
    "dataset.scale": POSITIVE,
    "dataset.shape": Sizes(),
    # objectives
    "objective.beta": NON_NEGATIVE,
    "objective.beta_rec": NON_NEGATIVE,
    "objective.beta_kl": NON_NEGATIVE,
    "objective.beta_neg": NON_NEGATIVE,
    "objective.free_bits": NON_NEGATIVE,
    "objective.free_bits_groups": Choice(("dim", "all")),
    "objective.samples": Int(1),
    "objective.k": Int(1),
    "objective.kappa": NON_NEGATIVE,
    "objective.damping": NON_NEGATIVE,
    "objective.lambda_lr": POSITIVE,
    "objective.target_entropy": Number(nullable=True),
    "objective.mean_only_epochs": Int(0),
    "objective.threshold": NON_NEGATIVE,
    "objective.rate": PROBABILITY_OPEN,
    "objective.gamma_init": PROBABILITY_OPEN,
    "objective.gamma_r": NON_NEGATIVE,
    "objective.vae_epochs": Int(0),
    # optimisers
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.eps": POSITIVE,
    "optimizer.fused": Choice((True, False, None)),
    # the Trainer
    "trainer.max_epochs": Int(1, also=(-1,)),
    "trainer.max_steps": Int(1, also=(-1,)),
    "trainer.devices": AnyOf((Int(1, also=(-1, "auto")), Sizes(low=0, list_only=True))),
    "trainer.accelerator": Choice(("cpu", "gpu", "cuda", "mps", "tpu", "auto")),
    "trainer.precision": Choice(
        ("32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16", "bf16-true", "16-true", "64-true", "64", 64)
    ),
    "trainer.log_every_n_steps": Int(1),
    "trainer.num_sanity_val_steps": Int(0, also=(-1,)),
    "trainer.gradient_clip_val": Number(0, nullable=True),
    "trainer.accumulate_grad_batches": Int(1),
    "trainer.check_val_every_n_epoch": Int(1, nullable=True),
    "trainer.limit_train_batches": Number(0, open_low=True, nullable=True),
    "trainer.limit_test_batches": Number(0, open_low=True, nullable=True),
    "trainer.deterministic": Choice((True, False, "warn")),
    "trainer.fast_dev_run": Int(0, also=(True, False)),
    # likelihoods
    "likelihood.rank": Int(1),
    "likelihood.diagonal": Choice(("fixed", "learned")),
    "likelihood.min_diag": POSITIVE,
    "likelihood.diag_init": POSITIVE,
    "likelihood.sigma": Choice(("fixed", "learned", "per_pixel")),
    "likelihood.sigma_init": POSITIVE,
    "likelihood.min_sigma": POSITIVE,
    "likelihood.num_mixtures": Int(1),
    "likelihood.levels": Int(2),
    # posteriors and priors
    "posterior.scale": Choice(("exp", "softplus")),
    "posterior.min_var": NON_NEGATIVE,
    "posterior.head_hidden": Sizes(nullable=True),
    "*.steps": Int(1),
    "*.hidden_layers": Int(1),
    "*.hidden_units": Int(1),
    "*.context_features": Int(1),
    # networks
    "*coder.channels": Sizes(),
    "*coder.hidden": Sizes(),
    "*coder.blocks": Int(1),
    "*coder.out_features": Int(1),
    "*coder.kernel_size": Int(1),
    "*coder.stride": Int(1),
    "*coder.padding": Int(0),
    "*coder.n_layers": Int(1),
    "*coder.cond_channels": Int(1),
    "*coder.hidden_channels": Int(1),
    # schedules (``+schedule@objective.beta=linear``)
    "*.period": Int(1),
    "*.delay": Int(0),
    "*.ratio": PROBABILITY_OPEN,
    # loggers and callbacks
    "logger.wandb.offline": BOOL,
    "callbacks.image_grids.n": Int(1),
    "callbacks.image_grids.every_n_epochs": Int(1),
    "callbacks.model_checkpoint.save_top_k": Int(0, also=(-1,)),
    "callbacks.ema.decay": PROBABILITY_OPEN,
}


def rule_for(key: str) -> Number | Choice | Sizes | AnyOf | None:
    """The rule of the first ``RULES`` pattern that matches ``key``, if any."""
    return next((rule for pattern, rule in RULES.items() if fnmatch.fnmatchcase(key, pattern)), None)
