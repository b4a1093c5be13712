"""The importance-sampled NLL's throughput against a per-example loop, and sampling time."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vae_experiments.bench.timing import clock, median, peak_memory_mib, reset_peak
from vae_experiments.bench.train_speed import autocast
from vae_experiments.metrics.nll import importance_sampled_log_likelihood
from vae_experiments.model import VAE


@torch.no_grad()
def per_example_log_likelihood(model: VAE, x: Tensor, k: int) -> Tensor:
    """The reference: one example at a time, all k samples in one pass through ``VAE.terms`` (Distribution objects,
    no chunking), as the authors' tools do it. Shape (B,)."""
    out = [model.terms(x[i : i + 1], k).log_weights.logsumexp(0) - math.log(k) for i in range(x.shape[0])]
    return torch.cat(out)


def nll_speed(
    model: VAE,
    images: Tensor,
    k: int,
    max_rows: int,
    batch_size: int,
    loop_images: int,
    precision: str = "32-true",
) -> dict[str, Any]:
    """Seconds per 1,000 images of the vectorised estimator and of the per-example loop (on the first
    ``loop_images``), and whether their estimates agree within Monte-Carlo error (|z| of the mean difference).

    The vectorised estimator runs under the run's autocast (``precision``), as the runner's test pass does; the loop,
    the reference, always in full precision."""
    model.eval()
    device = images.device
    with autocast(device, precision):
        importance_sampled_log_likelihood(model, images[:2], min(k, 8), max_rows)  # first-call set-up, untimed
        reset_peak(device)
        start = clock(device)
        fast = [importance_sampled_log_likelihood(model, xb, k, max_rows) for xb in images.split(batch_size)]
        fast_s = clock(device) - start
    fast = torch.cat(fast).float()
    memory = peak_memory_mib(device)
    m = min(loop_images, images.shape[0])
    start = clock(device)
    slow = per_example_log_likelihood(model, images[:m], k)
    slow_s = clock(device) - start
    diff = (fast[:m] - slow).double()
    se = float(diff.std() / math.sqrt(m)) if m > 1 else float("nan")
    return {
        "k": k,
        "precision": precision,
        "max_rows": max_rows,
        "images": images.shape[0],
        "vectorised": {"seconds_per_1000_images": 1000 * fast_s / images.shape[0], "nll": -float(fast.mean())},
        "per_example_loop": {
            "images": m,
            "seconds_per_1000_images": 1000 * slow_s / m,
            "nll": -float(slow.mean()),
            "nll_vectorised_same_images": -float(fast[:m].mean()),
        },
        "speedup": (slow_s / m) / (fast_s / images.shape[0]),
        "mean_difference_nats": float(diff.mean()),
        "difference_standard_error_nats": se,
        "z": float(diff.mean()) / se if se > 0 else float("nan"),
        "memory": memory,
    }


@torch.inference_mode()
def chunk_sweep(
    model: VAE, images: Tensor, k: int, rows: list[int], batch_size: int, rounds: int = 3
) -> dict[str, Any]:
    """Seconds per 1,000 images of the estimator at each chunk size (``eval.nll_max_rows``), the sizes interleaved
    within every round (median over rounds), each from the same seed, and the largest difference of each size's
    estimates from the first size's: on the CPU the same draws in other chunks, so only float rounding."""
    model.eval()
    device = images.device
    importance_sampled_log_likelihood(model, images[:2], min(k, 8), rows[0])  # first-call set-up, untimed
    times: dict[int, list[float]] = {r: [] for r in rows}
    estimates: dict[int, Tensor] = {}
    for _ in range(rounds):
        for r in rows:
            torch.manual_seed(0)
            start = clock(device)
            estimates[r] = torch.cat(
                [importance_sampled_log_likelihood(model, x, k, r) for x in images.split(batch_size)]
            )
            times[r].append(clock(device) - start)
    n = images.shape[0]
    return {
        "k": k,
        "images": n,
        "batch_size": batch_size,
        "rounds": rounds,
        "seconds_per_1000_images": {r: 1000 * median(t) / n for r, t in times.items()},
        "per_round": {r: [1000 * s / n for s in t] for r, t in times.items()},
        "max_abs_difference_nats": {r: float((estimates[r] - estimates[rows[0]]).abs().max()) for r in rows},
    }


def sampling_speed(model: VAE, n: int, repeats: int = 3) -> dict[str, Any]:
    model.eval()
    device = next(model.parameters()).device
    times = []
    for _ in range(repeats + 1):
        start = clock(device)
        model.sample(n)
        times.append(clock(device) - start)
    seconds = median(times[1:])
    return {"n": n, "median_s": seconds, "images_per_sec": n / seconds}
