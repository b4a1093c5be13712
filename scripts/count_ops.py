"""Operators dispatched per training iteration (each a kernel launch on a GPU), per experiment, as JSON.

    PYTHONPATH=. python scripts/count_ops.py --out benchmarks/operators_per_iteration.json

Counts one whole iteration after a first one (forward, backward, the non-finite guard of the GPU path, the optimiser
updates, the objective's after-update) in fp32 on the CPU, with synthetic data of each experiment's shape; views and
aliases, which launch nothing, are counted apart. ``tests/test_step_graph.py`` holds the same counts to a budget.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from vae_experiments.bench.dispatch import SETUPS, count_iteration, example_batch, iteration_context
from vae_experiments.objectives.base import run_iteration
from vae_experiments.train import CONFIG_DIR, build


def count(overrides: list[str], guard: bool) -> dict[str, int]:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    torch.manual_seed(0)
    _, module = build(cfg)
    module.model.train()
    module.host_reads_free = False
    ctx = iteration_context(module)
    if not guard:
        ctx.guard_finite = lambda *args, **kwargs: None
    x = example_batch(module, 2)
    run_iteration(module.objective, ctx, x)
    counted = count_iteration(module.objective, ctx, x)
    return {"kernels": counted.kernels, "all": sum(counted.counts.values()), "parameter_casts": counted.watched_casts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = {
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "setups": {
            name: {"overrides": o, "with_guard": count(o, True), "without_guard": count(o, False)}
            for name, o in SETUPS.items()
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
