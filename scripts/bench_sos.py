"""Time and peak memory of the low-rank Gaussian's log-density as the image size N = C*H*W and the rank R grow.

    PYTHONPATH=. python scripts/bench_sos.py --batch 25 --out benchmarks/sos_logprob.json
    PYTHONPATH=. python scripts/bench_sos.py --compare --out benchmarks/sos_logprob_accuracy.json

For each (N, R): ``LowRankGaussianLikelihood(rank=R)`` on random decoder outputs of B images, ``log_prob`` forward
and backward (what a training step does), median of ``--repeats`` after one warm-up; peak resident memory above the
process's baseline (Linux: the high-water mark is reset through /proc/self/clear_refs before each case). The cost
should follow B (N R^2 + R^3): the capacitance P^T D^-1 P is the N R^2 term; ``ns_per_bnr2`` shows how flat it is.

``--compare``: at N = 784, 12,288 and 116,412, R = 25, the default (float64 algebra) against the previous
implementation, torch's ``LowRankMultivariateNormal`` built in float32 or in float64 from the same float32
decoder outputs; forward + backward interleaved (one of each per round), medians and their ratio to the float32
path, and the largest error of log p against a float64 SVD of D^-1/2 P (``tests.test_low_rank.svd_log_prob``) on
images drawn from the model, for a generic factor and a nearly collinear one (columns 1e-4 apart).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.distributions import LowRankMultivariateNormal

from tests.test_low_rank import draw, near_collinear, svd_log_prob
from vae_experiments.distributions.low_rank import LowRankGaussianLikelihood

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 218, 178)]
RANKS = [5, 10, 25, 50]
COMPARE_SHAPES = [(1, 28, 28), (3, 64, 64), (3, 218, 178)]


def rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith(field))
    return kib / 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS


def case(shape: tuple[int, int, int], rank: int, batch: int, repeats: int) -> dict[str, float]:
    lik = LowRankGaussianLikelihood(rank=rank, diagonal="fixed")
    params = (0.01 * torch.randn(batch, lik.num_params(shape[0]), *shape[1:])).requires_grad_()
    x = torch.rand(batch, *shape)
    base = rss_mib("VmRSS:")
    reset_peak()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        lik(params).log_prob(x).sum().backward()
        if i:  # the first is warm-up
            times.append(time.perf_counter() - start)
        params.grad = None
    peak = rss_mib("VmHWM:") - base
    n = shape[0] * shape[1] * shape[2]
    median = statistics.median(times)
    return {
        "N": n,
        "R": rank,
        "B": batch,
        "median_s": round(median, 5),
        "ns_per_bnr2": round(1e9 * median / (batch * n * rank**2), 3),
        "peak_mib_above_baseline": round(peak, 1),
        "inputs_mib": round(params.numel() * 4 / 2**20, 1),
    }


def previous_log_prob(dtype: torch.dtype) -> Callable[[Tensor, Tensor, int], Tensor]:
    """The previous implementation: ``LowRankMultivariateNormal`` (fixed diagonal 1e-5) built in ``dtype``."""

    def log_prob(params: Tensor, x: Tensor, rank: int) -> Tensor:
        b, _, h, w = params.shape
        c = params.shape[1] // (1 + rank)
        p = params.to(dtype)
        mean = p[:, :c].flatten(1)
        factor = p[:, c:].reshape(b, rank, c * h * w).transpose(1, 2)
        mvn = LowRankMultivariateNormal(mean, factor, mean.new_full(mean.shape, 1e-5), validate_args=False)
        return mvn.log_prob(x.flatten(1).to(dtype)).to(params.dtype)

    return log_prob


def default_log_prob(params: Tensor, x: Tensor, rank: int) -> Tensor:
    return LowRankGaussianLikelihood(rank=rank)(params).log_prob(x)


PATHS = {
    "default": default_log_prob,
    "previous_float32": previous_log_prob(torch.float32),
    "previous_float64": previous_log_prob(torch.float64),
}


def max_error(path: Callable[[Tensor, Tensor, int], Tensor], params: Tensor, x: Tensor, rank: int) -> float | str:
    """max |log p - exact| over the batch, in nats; a raised factorisation is reported as such."""
    try:
        with torch.no_grad():
            log_prob = path(params, x, rank)
    except torch.linalg.LinAlgError:
        return "cholesky raised"
    return (log_prob.double() - svd_log_prob(params, x, rank, 1e-5)).abs().max().item()


def compare(shape: tuple[int, int, int], rank: int, batch: int, repeats: int) -> dict[str, object]:
    params = near_collinear(shape, rank, batch, spread=1.0, seed=0)
    x = draw(params, rank, 1e-5, seed=1)
    collinear = near_collinear(shape, rank, batch, spread=1e-4, seed=2)
    x_collinear = draw(collinear, rank, 1e-5, seed=3)
    times: dict[str, list[float]] = {name: [] for name in PATHS}
    leaf = params.clone().requires_grad_()
    for i in range(repeats + 1):
        for name, path in PATHS.items():
            start = time.perf_counter()
            path(leaf, x, rank).sum().backward()
            if i:  # the first round is warm-up
                times[name].append(time.perf_counter() - start)
            leaf.grad = None
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "N": shape[0] * shape[1] * shape[2],
        "R": rank,
        "B": batch,
        "median_s": {name: round(m, 5) for name, m in medians.items()},
        "ratio_to_previous_float32": {name: round(m / medians["previous_float32"], 3) for name, m in medians.items()},
        "max_abs_error_nats": {name: max_error(path, params, x, rank) for name, path in PATHS.items()},
        "max_abs_error_nats_near_collinear": {
            name: max_error(path, collinear, x_collinear, rank) for name, path in PATHS.items()
        },
        "log_prob_range": [round(v.item(), 1) for v in svd_log_prob(params, x, rank, 1e-5).aminmax()],
    }


def machine(threads: int, load_before: tuple[float, float, float]) -> dict[str, object]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": threads,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare", action="store_true", help="default vs the previous float32 / float64 paths")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()  # 1, 5 and 15 minutes: other processes may share the machine
    if args.compare:
        rows = [compare(s, 25, args.batch, args.repeats) for s in COMPARE_SHAPES]
        what = "log_prob forward + backward, B images of N values, rank 25, diagonal 1e-5: default vs previous paths"
    else:
        rows = [case(s, r, args.batch, args.repeats) for s in SHAPES for r in RANKS]
        what = "LowRankGaussianLikelihood(rank=R).log_prob forward + backward, B images of N values"
    for row in rows:
        print(json.dumps(row))
    result = {"what": what, "rows": rows, "machine": machine(args.threads, load_before)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
