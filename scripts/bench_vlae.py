"""VLAE speed per PixelCNN receptive field: training images/s and the time to sample 64 images (BENCHMARKS.md).

    PYTHONPATH=. python scripts/bench_vlae.py --threads 1 --out benchmarks/vlae.json

The model is ``experiment=vlae`` (ResNet encoder and base decoder, AF prior, tied PixelCNN, free bits, Adamax) on
28x28 binary images; only ``decoder.n_layers`` / ``kernel_size`` / ``kernel_height`` change between settings. A
training step is the objective's loss, backward and the optimiser step on one random binary batch (data loading
excluded); the median over ``--steps`` steps after ``--warmup`` is reported. Sampling is ``model.sample(64)``: z from
the AF prior (sequential), then the PixelCNN pixel by pixel.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from vae_experiments.train import CONFIG_DIR, build

FIELDS = [(2, 3, 1), (4, 3, 1), (6, 3, 1), (3, 5, 2)]  # (n_layers, kernel_size, kernel_height)


def bench(n_layers: int, kernel_size: int, kernel_height: int, batch: int, warmup: int, steps: int) -> dict:
    overrides = [
        "experiment=vlae",
        "dataset=synthetic",
        "dataset.shape=[1,28,28]",
        "dataset.binarize=dynamic",
        f"decoder.n_layers={n_layers}",
        f"decoder.kernel_size={kernel_size}",
        f"decoder.kernel_height={kernel_height}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    _, module = build(cfg)
    model, objective = module.model, module.objective
    optimizer = module.configure_optimizers()
    x = torch.rand(batch, 1, 28, 28).round()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        objective.set_step(i)
        loss, _ = objective.loss(model, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    model.eval()
    start = time.perf_counter()
    model.sample(64)
    sample_s = time.perf_counter() - start
    step = statistics.median(times)
    return {
        "receptive_field": model.decoder.receptive_field,
        "n_layers": n_layers,
        "kernel_size": kernel_size,
        "kernel_height": kernel_height,
        "batch": batch,
        "median_step_s": round(step, 4),
        "train_images_per_s": round(batch / step, 1),
        "sample_64_s": round(sample_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/vlae.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [bench(*field, args.batch, args.warmup, args.steps) for field in FIELDS]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
