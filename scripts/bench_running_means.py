"""Host cost of the training step's running means: ``RunningMeans`` against one torchmetrics ``MeanMetric`` per key.

    PYTHONPATH=. python scripts/bench_running_means.py --out benchmarks/running_means.json

One update of ``--keys`` scalar logs (0-d float32 tensors on the CPU, weight 128, the training step's shape): the
aten operators it dispatches (each a kernel launch on a GPU) and its median wall time over ``--reps`` updates, the
two measured interleaved, update by update, in one process on one thread. MeanMetric runs with
``nan_strategy="disable"`` (the other strategies read the values on the host each update).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchmetrics
from torchmetrics.aggregation import MeanMetric

from vae_experiments.bench.dispatch import OperatorCount
from vae_experiments.metrics.running import RunningMeans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/running_means.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    logs = {f"key{i}": torch.randn(()) for i in range(args.keys)}
    running = RunningMeans()
    metrics = {key: MeanMetric(nan_strategy="disable") for key in logs}

    def running_means() -> None:
        running.update(logs, 128.0, torch.device("cpu"))

    def mean_metrics() -> None:
        for key, value in logs.items():
            metrics[key].update(value, 128.0)

    updates: dict[str, Callable[[], None]] = {"RunningMeans": running_means, "MeanMetric per key": mean_metrics}
    operators = {}
    for name, update in updates.items():
        update()  # the accumulators exist from here on, as in every later step
        counter = OperatorCount()
        with counter:
            update()
        operators[name] = counter.kernels
    times: dict[str, list[float]] = {name: [] for name in updates}
    for _ in range(args.reps):
        for name, update in updates.items():
            start = time.perf_counter()
            update()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for key, metric in metrics.items():  # both computed the same means
        torch.testing.assert_close(metric.compute(), running.means()[key])
    result = {
        "machine": f"{platform.processor() or platform.machine()}, 1 torch thread",
        "torch": torch.__version__,
        "torchmetrics": torchmetrics.__version__,
        "keys": args.keys,
        "reps": args.reps,
        "operators_per_update": operators,
        "median_update_us": {name: round(1e6 * m, 1) for name, m in medians.items()},
        "ratio_mean_metric_to_running_means": round(medians["MeanMetric per key"] / medians["RunningMeans"], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
