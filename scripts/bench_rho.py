"""Training-step time of ``posterior=rho`` over ``posterior=diagonal`` in the rho-VAE MLP setup, in one process.

    python scripts/bench_rho.py [--steps 1000] [--warmup 100] [--threads 2] [--out benchmarks/rho.json]

Both models come from ``experiment=rho_vae`` (784-400-10, B = 128, Bernoulli, ELBO, Adam) and differ only in the
posterior. One step = forward (encoder, posterior, sampling, log q, KL, decoder, likelihood), backward and Adam, on
a fixed batch of Fashion-MNIST training images (data loading excluded). The two are interleaved step by step, in
alternating order, and the medians are taken after the warm-up steps.

Beside them, in the same interleaving, the authors' two steps as their ``models.py`` and ``main.py`` compute them
(``scripts/rho_authors_style.py``; docs/rho_vae.md#where-the-authors-code-differs): the machine's yardstick for the
authors' figures (BENCHMARKS.md, The authors' figures), measured in the same minutes as ours, because this machine's
speed drifts within an hour (BENCHMARKS.md, Summary).
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
from hydra import compose, initialize_config_dir
from lightning import LightningDataModule
from omegaconf import DictConfig, open_dict

from scripts.rho_authors_style import authors_step
from vae_experiments.bench.timing import matmul_gflops
from vae_experiments.bench.train_speed import plain_step
from vae_experiments.train import CONFIG_DIR, build

POSTERIORS = ("diagonal", "rho")
AUTHORS = ("authors_diagonal", "authors_rho")


def make_step(posterior: str, x: torch.Tensor) -> Callable[[int], None]:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=rho_vae", f"posterior={posterior}"])
    with open_dict(cfg):
        cfg.paths.output_dir = "unused"
    _, module = build(cfg)
    optimizer = module.configure_optimizers()
    return plain_step(module.model, module.objective, optimizer, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/rho.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        data_cfg = compose(config_name="train", overrides=["experiment=rho_vae"]).dataset
    datamodule = build_datamodule(data_cfg)
    x = next(iter(datamodule.train_dataloader()))
    steps = {name: make_step(name, x) for name in POSTERIORS}
    steps.update({name: authors_step(name.removeprefix("authors_"), x) for name in AUTHORS})
    names = (*POSTERIORS, *AUTHORS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.warmup + args.steps):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            steps[name](i)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(t) for name, t in times.items()}
    ops = {name: ops_per_step(step) for name, step in steps.items()}
    ratio = median["rho"] / median["diagonal"]
    authors_ratio = median["authors_rho"] / median["authors_diagonal"]
    result = {
        "setup": "experiment=rho_vae: MLP 784-400-10, B=128, Bernoulli, ELBO (closed-form KL), Adam",
        "step": "zero_grad + objective.loss + backward + Adam step; data loading excluded",
        "threads": args.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "median_step_ms": {name: round(1e3 * m, 4) for name, m in median.items()},
        "images_per_sec": {name: round(x.shape[0] / m, 1) for name, m in median.items()},
        "ratio_rho_over_diagonal": round(ratio, 4),
        "aten_ops_per_step": ops,
        "authors_style_ratio_rho_over_diagonal": round(authors_ratio, 4),
        "ours_over_authors_style": {name: round(median[name] / median[f"authors_{name}"], 4) for name in POSTERIORS},
        "authors_reference9": {"diagonal_ms": 4.63, "rho_ms": 5.49, "ratio": 1.18},
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_average": os.getloadavg(),
            "matmul_gflops": round(matmul_gflops(), 1),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def ops_per_step(step: Callable[[int], None]) -> int:
    """Top-level aten ops one step dispatches (forward, backward and Adam): the load-independent cost measure."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(0)
    return sum(
        1
        for event in prof.events()
        if event.name.startswith("aten::")
        and (event.cpu_parent is None or not event.cpu_parent.name.startswith("aten::"))
    )


def build_datamodule(data_cfg: DictConfig) -> LightningDataModule:
    from hydra.utils import instantiate

    datamodule = instantiate(data_cfg)
    datamodule.setup("fit")
    return datamodule


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
