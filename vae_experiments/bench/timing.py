"""Clocks and memory gauges that work the same on the CPU and on CUDA."""

from __future__ import annotations

import itertools
import resource
import statistics
import sys
import time
from typing import Any

import lightning as L
import torch


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall-clock reading covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def stamp(device: torch.device) -> tuple[float, float]:
    """(wall-clock seconds, this process's CPU seconds). On a shared machine the CPU time of a single-threaded
    process is the steadier gauge of work done: waiting for a core counts in the wall clock only."""
    sync(device)
    return time.perf_counter(), time.process_time()


def intervals(stamps: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds between consecutive stamps."""
    wall = [b[0] - a[0] for a, b in itertools.pairwise(stamps)]
    cpu = [b[1] - a[1] for a, b in itertools.pairwise(stamps)]
    return wall, cpu


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def peak_memory_mib(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (MiB), and CUDA's peak allocation since the last reset on a GPU."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mib": rss_kib / (1024 * 1024) if sys.platform == "darwin" else rss_kib / 1024}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class StepClock(L.Callback):
    """Reads the clock at the start of every training batch: consecutive readings bound one whole iteration of
    ``trainer.fit`` (fetch, step, optimiser, every callback's and logger's per-batch work). The last batch has no
    successor and is not timed (its end runs into the epoch-end hooks: checkpointing)."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        self.stamps.append(stamp(pl_module.device))


def matmul_gflops(n: int = 2048, repeats: int = 7) -> float:
    """The CPU's current fp32 matmul speed (median of ``repeats`` n^3 products): this kind of machine's speed drifts
    over hours (BENCHMARKS.md, Summary), so every JSON carries its own yardstick."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def gpu_busy_fraction(step: Any, iterations: int, device: torch.device) -> float | None:
    """The share of wall time the GPU spends in kernels and copies over ``iterations`` calls of ``step(i)``: the
    profiler's summed device time over the wall clock of the same calls (single stream; ``None`` off CUDA or when the
    profiler sees no device activity)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = clock(device)
        for i in range(iterations):
            step(i)
        wall = clock(device) - start
    device_us = sum(event.self_device_time_total for event in prof.key_averages())
    return device_us / (wall * 1e6) if device_us > 0 else None
