"""trainer.fit's step against a plain PyTorch loop: one model, one loss, the same batches, alternating rounds.

The plain loop is what a researcher would write by hand: the objective's step called directly, ``backward``,
the optimiser's ``step`` (objectives with their own optimisation, such as Soft-IntroVAE, step on a plain
``StepContext``). Both sides time whole iterations start to start,
so the ratio of their medians is the runner's overhead, measured under the same load.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from vae_experiments.bench.timing import StepClock, intervals, median, peak_memory_mib, reset_peak, stamp, sync
from vae_experiments.capture import capture_training, recorded_loop
from vae_experiments.module import VAEModule
from vae_experiments.objectives.base import StepContext, run_iteration
from vae_experiments.runtime import wants_channels_last

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast Lightning's ``precision`` puts around a step, for a loop without Lightning."""
    dtype = AUTOCAST.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def take_batches(loader: Iterable[Tensor], n: int, device: torch.device) -> tuple[list[Tensor], list[float]]:
    """``n`` batches (cycling the loader) already on ``device``, and the seconds each took to load and move."""
    batches: list[Tensor] = []
    seconds: list[float] = []
    it: Iterator[Tensor] = iter(loader)
    while len(batches) < n:
        start = time.perf_counter()
        try:
            x = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        x = x.to(device, non_blocking=True)
        sync(device)
        seconds.append(time.perf_counter() - start)
        batches.append(x)
    return batches, seconds


def optimizers_of(configured: Any) -> list[Optimizer]:
    """The optimisers out of whatever ``configure_optimizers`` returned (one, a list, or Lightning's dict form)."""
    if isinstance(configured, Optimizer):
        return [configured]
    if isinstance(configured, dict):
        return [configured["optimizer"]]
    if isinstance(configured, tuple) and len(configured) == 2 and isinstance(configured[0], list):
        return list(configured[0])
    return [o["optimizer"] if isinstance(o, dict) else o for o in configured]


def plain_step(model: nn.Module, objective: Any, optimizer: Optimizer, x: Tensor) -> Callable[[int], None]:
    """One iteration of the plainest loop on a fixed batch: zero_grad, ``objective.loss``, backward, step."""

    def step(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = objective.loss(model, x)
        loss.backward()
        optimizer.step()

    return step


def plain_step_times(
    module: VAEModule, batches: list[Tensor], precision: str, clip: float | None, capture: bool = False
) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per iteration of a hand-written loop over ``batches`` (start to start; the last
    iteration is dropped, as the runner's is). Objectives with their own optimisation run their step on a plain
    ``StepContext``. ``capture`` (CUDA): each iteration through the same CUDA-graph recording the runner uses."""
    model, objective = module.model, module.objective
    device = batches[0].device
    model.train()
    optimizers = optimizers_of(objective.configure_optimizers(model, module.optimizer_factory))
    cast = autocast(device, precision)
    recorder = recorded_loop(optimizers) if capture else None
    stamps: list[tuple[float, float]] = []
    for step, x in enumerate(batches):
        stamps.append(stamp(device))
        objective.set_step(step * objective.optimizer_steps_per_batch)
        ctx = StepContext(model, optimizers, global_step=step * objective.optimizer_steps_per_batch)
        if recorder is not None:
            with cast:
                recorder(tuple(x.shape), lambda batch, ctx=ctx: run_iteration(objective, ctx, batch).logs, x)
        elif objective.automatic_optimization:
            (opt,) = optimizers
            opt.zero_grad(set_to_none=True)
            with cast:
                out = objective.training_step(ctx, x)
            out.loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            objective.after_update(ctx, out)
        else:
            with cast:
                out = objective.training_step(ctx, x)
            objective.after_update(ctx, out)
    return intervals(stamps)


def runner_step_times(cfg: DictConfig, module: VAEModule, batches: list[Tensor]) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per iteration of ``trainer.fit`` over ``batches``, with the run's configured callbacks
    and loggers."""
    from vae_experiments.train import build_trainer

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.trainer.max_epochs = 1
        cfg.trainer.num_sanity_val_steps = 0
    step_clock = StepClock()
    trainer = build_trainer(cfg, step_clock)
    if cfg.get("capture") and trainer.strategy.root_device.type == "cuda":
        capture_training(trainer, module)
    loader = DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return intervals(step_clock.stamps)


def fresh(module: VAEModule, compile_model: bool, channels_last: bool) -> VAEModule:
    """A copy of the initial module, set up as ``train`` sets it up (channels-last, compiled)."""
    out = copy.deepcopy(module)
    if channels_last:
        out.use_channels_last()
    if compile_model:
        out.model.compile_networks()
    return out


def compare(cfg: DictConfig, module: VAEModule, batches: list[Tensor], warmup: int, rounds: int) -> dict[str, Any]:
    """Alternate plain and runner rounds over the same batches from the same initial weights; medians per round,
    and the median over rounds of the per-round ratios (wall clock and CPU time)."""
    device = batches[0].device
    precision = str(cfg.trainer.get("precision", "32-true"))
    clip = cfg.trainer.get("gradient_clip_val")
    capture = bool(cfg.get("capture")) and device.type == "cuda" and not clip
    compile_model = bool(cfg.get("compile", False))
    nhwc = wants_channels_last(cfg.get("channels_last", False), device, module.model)
    sides: dict[str, dict[str, list[float]]] = {s: {"wall": [], "cpu": []} for s in ("plain", "runner")}
    memory: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        reset_peak(device)
        times = plain_step_times(fresh(module, compile_model, nhwc).to(device), batches, precision, clip, capture)
        memory["plain"] = peak_memory_mib(device)
        for clock_name, values in zip(("wall", "cpu"), times, strict=True):
            sides["plain"][clock_name].append(median(values[warmup:]))
        reset_peak(device)
        times = runner_step_times(cfg, fresh(module, compile_model, nhwc), batches)
        memory["runner"] = peak_memory_mib(device)
        for clock_name, values in zip(("wall", "cpu"), times, strict=True):
            sides["runner"][clock_name].append(median(values[warmup:]))
    batch = batches[0].shape[0]
    out: dict[str, Any] = {
        "batch_size": batch,
        "timed_steps_per_round": len(batches) - 1 - warmup,
        "warmup": warmup,
        "rounds": rounds,
        "precision": precision,
        "capture": capture,
        "memory": memory,
    }
    for side, clocks in sides.items():
        wall = median(clocks["wall"])
        out[side] = {
            "median_step_s": wall,
            "images_per_sec": batch / wall,
            "median_step_cpu_s": median(clocks["cpu"]),
            "round_medians_s": clocks["wall"],
            "round_medians_cpu_s": clocks["cpu"],
        }
    for clock_name, key in (("wall", "runner_over_plain"), ("cpu", "runner_over_plain_cpu")):
        ratios = [r / p for r, p in zip(sides["runner"][clock_name], sides["plain"][clock_name], strict=True)]
        out[key] = median(ratios)
        out[f"{key}_per_round"] = ratios
    return out


def quiet_lightning() -> None:
    """Keep Lightning's banners out of the benchmark's output."""
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
