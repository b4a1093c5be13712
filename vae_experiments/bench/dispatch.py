"""Operators dispatched per training iteration: the CPU's count of what a GPU launches as kernels."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from vae_experiments.objectives.base import Objective, StepContext, run_iteration

# the experiments whose iterations are counted (scripts/count_ops.py) and held to a budget (tests/test_step_graph.py),
# on synthetic data of each one's shape where its data are not on every machine
SETUPS = {
    "default": [],
    "rho": ["posterior=rho"],
    "iaf_af": ["posterior=iaf", "prior=af"],
    "sos_vae_fmnist": ["experiment=sos_vae_fmnist", "dataset=synthetic", "dataset.shape=[1,28,28]"],
    "soft_intro_vae": ["experiment=soft_intro_vae", "dataset=synthetic", "dataset.shape=[3,32,32]"],
    "soft_intro_vae_2d": ["experiment=soft_intro_vae_2d"],
}
# aten operators that only re-describe a tensor's memory (no kernel on a GPU)
VIEWS = frozenset(
    {
        "aten.view",
        "aten._unsafe_view",
        "aten.t",
        "aten.transpose",
        "aten.permute",
        "aten.expand",
        "aten.unsqueeze",
        "aten.squeeze",
        "aten.slice",
        "aten.select",
        "aten.split",
        "aten.split_with_sizes",
        "aten.unbind",
        "aten.as_strided",
        "aten.alias",
        "aten.detach",
        "aten._reshape_alias",
        "aten.unflatten",
    }
)


class OperatorCount(TorchDispatchMode):
    """Counts the aten operators dispatched while active, by name (``aten.mm``, ...), and the dtype casts of the
    ``watched`` tensors (a model's parameters: a cast of one per step is a copy of the weights per step)."""

    def __init__(self, watched: Iterable[Tensor] = ()) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.watched_casts = 0
        self._watched = {t.data_ptr() for t in watched}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func.overloadpacket)
        self.counts[name] += 1
        if name == "aten._to_copy" and isinstance(args[0], Tensor) and args[0].data_ptr() in self._watched:
            self.watched_casts += 1
        return func(*args, **(kwargs or {}))

    @property
    def kernels(self) -> int:
        """Operators that compute (everything but views and aliases)."""
        return sum(n for name, n in self.counts.items() if name not in VIEWS)


def count_iteration(objective: Objective, ctx: StepContext, x: Tensor) -> OperatorCount:
    """The operators of one whole training iteration (``run_iteration``: step, backward, update, after-update), and
    the casts of the model's parameters among them."""
    counter = OperatorCount(ctx.model.parameters())
    with counter:
        run_iteration(objective, ctx, x)
    return counter


def iteration_context(module: Any) -> StepContext:
    """A plain context over ``module``'s model and freshly configured optimisers (as a run configures them)."""
    optimizers = module.objective.configure_optimizers(module.model, module.optimizer_factory)
    optimizers = list(optimizers) if isinstance(optimizers, list | tuple) else [optimizers]
    return StepContext(module.model, optimizers, guard_finite=module.guard_finite)


def example_batch(module: Any, batch_size: int, seed: int = 0) -> Tensor:
    """A random batch of the model's data shape, binary where the likelihood is a Bernoulli."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, *module.model.data_shape, generator=generator)
    return x.round() if module.model.likelihood.levels == 2 else x
