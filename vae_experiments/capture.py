"""Whole-step capture: a training iteration recorded once as a CUDA graph and replayed for every batch.

A small model's step is bound by the host on a GPU: thousands of kernel launches, each a few microseconds of Python
and driver work, while the GPU computes for a fraction of the time. A CUDA graph replays all of them with one launch.
What the step must be for that (and is, in this project): no host read of a device value, no Python branch on a
tensor, the same shapes at every replay, random draws from CUDA's default generator (graph-safe), optimisers that
keep their state on the device (``capturable``), and every value that changes between steps (a scheduled weight, the
batch) held in a tensor whose storage stays put. ``tests/test_step_graph.py`` proves the first two on the CPU by
compiling the whole step with ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.optim import Optimizer

log = logging.getLogger(__name__)

Step = Callable[[Tensor], dict[str, Tensor]]


class GraphBackend(Protocol):
    """How steps are warmed up and recorded; ``CudaGraphs`` on a GPU, a stand-in in the CPU tests."""

    def warm(self, run: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]: ...

    def record(self, run: Callable[[], dict[str, Tensor]]) -> tuple[Callable[[], None], dict[str, Tensor]]: ...


class CudaGraphs:
    """``torch.cuda.CUDAGraph`` recording, all graphs of a run sharing one memory pool."""

    def __init__(self) -> None:
        self.pool: tuple[int, int] | None = None
        self.stream = torch.cuda.Stream()

    def warm(self, run: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """Run eagerly on a side stream, as graph capture requires of the iterations before it."""
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            out = run()
        torch.cuda.current_stream().wait_stream(self.stream)
        return out

    def record(self, run: Callable[[], dict[str, Tensor]]) -> tuple[Callable[[], None], dict[str, Tensor]]:
        """Record ``run`` (no kernel runs while recording) and return the replay and the recorded outputs."""
        graph = torch.cuda.CUDAGraph()
        # autocast's cache of cast weights would outlive the recording and free memory the graph still uses
        torch.clear_autocast_cache()
        cache = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(False)
        try:
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                out = run()
        finally:
            torch.set_autocast_cache_enabled(cache)
        self.pool = graph.pool()
        return graph.replay, out


@dataclass
class _Recording:
    batch: Tensor
    replay: Callable[[], None] | None = None
    outputs: dict[str, Tensor] = field(default_factory=dict)
    calls: int = 0


class CapturedStep:
    """Runs ``step(x) -> logs`` through graphs, one per key (the step's variant and the batch's shape and dtype).

    For a new key the first ``warmup`` calls run eagerly (``backend.warm``); the next copies its batch into a static
    buffer, records the step on it and replays the recording; later calls copy and replay. Every call is a real
    training iteration on its batch. The returned tensors are the recording's outputs: read them before the next
    call. If recording fails, the step runs eagerly from then on (``reason`` says why, logged once); ``prepare``
    runs before each recording and before the eager run that replaces a failed one (the runner drops the gradients
    there, so that backward allocates them inside the graph's memory).
    """

    def __init__(self, backend: GraphBackend, warmup: int = 3, prepare: Callable[[], None] = lambda: None) -> None:
        if warmup < 1:
            raise ValueError(f"capture warm-up must be at least 1 iteration, got {warmup}")
        self.backend = backend
        self.warmup = warmup
        self.prepare = prepare
        self.reason: str | None = None
        self._recordings: dict[Hashable, _Recording] = {}

    @property
    def active(self) -> bool:
        return self.reason is None

    def __call__(self, key: Hashable, step: Step, x: Tensor) -> tuple[dict[str, Tensor], bool]:
        """Run one iteration on ``x``; returns its logs and whether they came from a replay."""
        if self.reason is not None:
            return step(x), False
        rec = self._recordings.get(key)
        if rec is None:
            rec = self._recordings[key] = _Recording(batch=torch.empty_like(x))
        rec.calls += 1
        if rec.calls <= self.warmup:
            return self.backend.warm(lambda: step(x)), False
        rec.batch.copy_(x)
        if rec.replay is None:
            self.prepare()
            try:
                rec.replay, rec.outputs = self.backend.record(lambda: step(rec.batch))
            except Exception as exc:  # any failure to record: the step itself is sound, run it eagerly
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                self.reason = f"{type(exc).__name__}: {first_line}"
                self._recordings.clear()
                log.warning("capture: off, the training step runs eagerly from here (%s)", self.reason)
                self.prepare()
                return step(x), False
        rec.replay()
        return rec.outputs, True


def make_capturable(optimizer: Optimizer) -> None:
    """Keep ``optimizer``'s step counts on the device, so its update can be recorded (torch's ``capturable``)."""
    for group in optimizer.param_groups:
        group["capturable"] = True


def recorded_loop(optimizers: Sequence[Optimizer], warmup: int = 3) -> CapturedStep:
    """A ``CapturedStep`` for a plain training loop over ``optimizers``: made capturable, their gradients dropped
    before each recording."""
    for optimizer in optimizers:
        make_capturable(optimizer)

    def drop_gradients() -> None:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)

    return CapturedStep(CudaGraphs(), warmup=warmup, prepare=drop_gradients)


def blocker(trainer: Any) -> str | None:
    """Why a fit with ``trainer`` cannot record its training step (``None`` when it can): each of these puts work
    between the step's parts that a recording would not replay."""
    if trainer.strategy.root_device.type != "cuda":
        return "not on a CUDA device"
    if trainer.world_size > 1:
        return "data-parallel: the gradients' all-reduce runs outside the step"
    if trainer.gradient_clip_val:
        return "trainer.gradient_clip_val is Lightning's, applied between backward and the update"
    if trainer.accumulate_grad_batches > 1:
        return "trainer.accumulate_grad_batches > 1 steps the optimiser every few batches"
    if str(trainer.precision).startswith("16"):
        return "fp16 mixed precision scales the loss on the host; bf16-mixed or 32-true can be recorded"
    return None


def capture_training(trainer: Any, module: Any, warmup: int = 3) -> str | None:
    """Record ``module``'s training step on ``trainer``'s GPU (``VAEModule.use_capture``), or return why not."""
    reason = blocker(trainer)
    if reason is None:
        module.use_capture(CapturedStep(CudaGraphs(), warmup=warmup, prepare=module.drop_gradients))
    return reason
