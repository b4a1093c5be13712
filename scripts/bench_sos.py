"""Time and peak memory of the low-rank Gaussian's log-density as the image size N = C*H*W and the rank R grow.

    PYTHONPATH=. python scripts/bench_sos.py --batch 25 --out benchmarks/sos_logprob.json

For each (N, R): ``LowRankGaussianLikelihood(rank=R)`` on random decoder outputs of B images, ``log_prob`` forward
and backward (what a training step does), median of ``--repeats`` after one warm-up; peak resident memory above the
process's baseline (Linux: the high-water mark is reset through /proc/self/clear_refs before each case). The cost
should follow B (N R^2 + R^3): the capacitance P^T D^-1 P is the N R^2 term; ``ns_per_bnr2`` shows how flat it is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from vae_experiments.distributions.low_rank import LowRankGaussianLikelihood

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 218, 178)]
RANKS = [5, 10, 25, 50]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [case(s, r, args.batch, args.repeats) for s in SHAPES for r in RANKS]
    for row in rows:
        print(json.dumps(row))
    result = {
        "what": "LowRankGaussianLikelihood(rank=R).log_prob forward + backward, B images of N values",
        "rows": rows,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "load_average": os.getloadavg(),
            "torch": torch.__version__,
        },
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
