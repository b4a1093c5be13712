"""The training step as a GPU sees it, checked on the CPU: how many operators one iteration dispatches (each a kernel
launch on a GPU), and that the whole iteration, optimiser update included, is one graph for ``torch.compile``: no
host read, no Python branch on a tensor's value, nothing that would stop a CUDA graph from recording it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch._dynamo
from torch import Tensor

from vae_experiments.bench.dispatch import SETUPS, OperatorCount, count_iteration, example_batch, iteration_context
from vae_experiments.objectives.base import StepContext, run_iteration
from vae_experiments.train import build

# Operators that compute (views and aliases left out) in one fp32 iteration on the GPU path: forward, backward,
# the non-finite guard, the fused Adam update(s), the objective's after-update (BENCHMARKS.md, "Operators per
# training iteration", has them before and after the cuts).
BUDGET = {
    "default": 103,
    "rho": 170,
    "iaf_af": 342,
    "sos_vae_fmnist": 316,
    "soft_intro_vae": 1624,
    "soft_intro_vae_2d": 139,
}
# the same experiments at a few channels wide, for the compile test (the same code paths, a fraction of the time)
NARROW = {
    "sos_vae_fmnist": ["encoder.channels=[4,8]", "decoder.channels=[4,8]", "latent_dim=4"],
    "soft_intro_vae": ["encoder.channels=[4,8]", "decoder.channels=[4,8]", "latent_dim=4"],
}


def built(make_cfg: Any, setup: str, *extra: str) -> Any:
    torch.manual_seed(0)
    _, module = build(make_cfg(*SETUPS[setup], *extra, fast=False))
    module.model.train()
    module.host_reads_free = False  # the GPU path: the non-finite verdict stays on the device
    return module


@pytest.mark.parametrize("setup", list(SETUPS))
def test_operators_per_iteration_stay_within_budget(make_cfg, setup: str) -> None:
    module = built(make_cfg, setup)
    ctx = iteration_context(module)
    x = example_batch(module, 8)
    run_iteration(module.objective, ctx, x)  # optimiser state exists from here on, as in every later step
    counted = count_iteration(module.objective, ctx, x)
    assert counted.kernels <= BUDGET[setup], counted.counts.most_common(12)
    assert counted.kernels >= 0.95 * BUDGET[setup], "well under budget: lower the budget to keep the gain"
    assert counted.watched_casts == 0  # no per-step copy of the weights in another dtype


def test_the_count_sees_every_operator() -> None:
    counter = OperatorCount()
    with counter:
        a = torch.ones(3)
        (a * 2 + 1).sum().view(1)
    assert counter.counts["aten.mul"] == 1 and counter.counts["aten.add"] == 1 and counter.counts["aten.sum"] == 1
    assert counter.kernels == sum(counter.counts.values()) - counter.counts["aten.view"]
    weight = torch.ones(2)
    with (casts := OperatorCount([weight])):
        weight.double()
        torch.ones(2).double()
    assert casts.watched_casts == 1


class TracedAdam:
    """torch's fused Adam with its update called as the fused operator itself.

    ``torch.optim`` deliberately breaks the compiled graph around ``step()`` (so that an optimiser compiled on its
    own sees an inference graph); a CUDA graph records ``step()`` as it is. For the proof that nothing else in the
    iteration breaks the graph, the update runs here as the very operator ``step()`` runs, on the optimiser's own
    state (``test_traced_adam_is_torchs_update`` shows the two are the same update, bit for bit).
    """

    def __init__(self, optimizer: torch.optim.Adam) -> None:
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        found_inf = getattr(self.optimizer, "found_inf", None)  # set by the non-finite guard on the GPU path
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:  # torch's lazy state, as its fused Adam creates it at the first step
                if not self.optimizer.state[p]:
                    self.optimizer.state[p] = {
                        "step": torch.zeros((), dtype=torch.float32, device=p.device),
                        "exp_avg": torch.zeros_like(p),
                        "exp_avg_sq": torch.zeros_like(p),
                    }
            state = [self.optimizer.state[p] for p in params]
            steps = [s["step"] for s in state]
            torch._foreach_add_(steps, 1)
            beta1, beta2 = group["betas"]
            torch._fused_adam_(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in state],
                [s["exp_avg_sq"] for s in state],
                [],
                steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                amsgrad=False,
                maximize=False,
                found_inf=found_inf,
            )


def test_traced_adam_is_torchs_update() -> None:
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = copy.deepcopy(a)
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, fused=True)
    traced = TracedAdam(opt_b)
    for _ in range(3):
        x = torch.randn(4, 5)
        for model, opt in ((a, opt_a), (b, traced)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def compile_whole_iteration(module: Any, x: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One iteration eagerly and one compiled with ``fullgraph=True`` (which raises on any graph break), from the
    same weights, optimiser state, objective buffers and random state; returns both results (logs, and the weights
    and buffers after the iteration)."""
    torch._dynamo.reset()
    ctx = iteration_context(module)
    run_iteration(module.objective, ctx, x)  # optimiser state and the guard's flag exist from here on
    traced = StepContext(module.model, [TracedAdam(o) for o in ctx.optimizers], guard_finite=module.guard_finite)
    start = copy.deepcopy(
        (module.model.state_dict(), [o.state_dict() for o in ctx.optimizers], module.objective.state_dict())
    )

    def iteration(x: Tensor) -> dict[str, Tensor]:
        return run_iteration(module.objective, traced, x).logs

    results = []
    for run in (iteration, torch.compile(iteration, fullgraph=True, backend="eager")):
        module.model.load_state_dict(start[0])
        module.objective.load_state_dict(start[2])  # a Lagrange multiplier, soft free bits' gamma
        for optimizer, state in zip(ctx.optimizers, start[1], strict=True):
            optimizer.load_state_dict(copy.deepcopy(state))  # it adopts the given tensors, which the run updates
        torch.manual_seed(7)
        logs = {k: v.clone() for k, v in run(x).items()}
        state = {**module.model.state_dict(), **{f"objective.{k}": v for k, v in module.objective.state_dict().items()}}
        results.append((logs, {k: v.clone() for k, v in state.items()}))
    return results[0], results[1]


def assert_same_iteration(eager: Any, compiled: Any) -> None:
    for got, want in zip(compiled, eager, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture
def trace_backward() -> Any:
    """Let dynamo trace ``loss.backward()`` into the graph (the iteration's backward is part of what is proved)."""
    saved = torch._dynamo.config.trace_autograd_ops
    torch._dynamo.config.trace_autograd_ops = True
    yield
    torch._dynamo.config.trace_autograd_ops = saved
    torch._dynamo.reset()


@pytest.mark.parametrize("setup", list(SETUPS))
def test_the_whole_iteration_compiles_as_one_graph(make_cfg, trace_backward: Any, setup: str) -> None:
    module = built(make_cfg, setup, *NARROW.get(setup, []))
    eager, compiled = compile_whole_iteration(module, example_batch(module, 4))
    assert_same_iteration(eager, compiled)


@pytest.mark.slow
@pytest.mark.parametrize("setup", list(NARROW))
def test_the_full_size_experiments_compile_as_one_graph(make_cfg, trace_backward: Any, setup: str) -> None:
    module = built(make_cfg, setup)
    eager, compiled = compile_whole_iteration(module, example_batch(module, 4))
    assert_same_iteration(eager, compiled)


def test_a_host_read_in_the_step_breaks_the_graph(make_cfg, trace_backward: Any) -> None:
    """The proof above can fail: an ``.item()`` inside the objective's loss is a graph break, and fullgraph raises."""
    module = built(make_cfg, "default")
    loss = module.objective.loss

    def reading_loss(model: Any, x: Tensor) -> Any:
        out = loss(model, x)
        if out[0].item() > 0:
            return out
        return out

    module.objective.loss = reading_loss
    with pytest.raises(torch._dynamo.exc.TorchDynamoException, match="item"):
        compile_whole_iteration(module, example_batch(module, 4))
