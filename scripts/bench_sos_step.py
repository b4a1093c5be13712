"""One SOS-VAE training step at 1x26x26 (the shape of the authors' timing row, BENCHMARKS.md) in four ways,
interleaved in one process.

    PYTHONPATH=. python scripts/bench_sos_step.py [--steps 8] [--warmup 2] --out benchmarks/sos_step_26x26.json

The ``experiment=sos_vae`` model (the authors' CelebA nets, latent 128, rank 25, ``constrained_kl``) on B = 25 random
1x26x26 images, in a plain loop (zero_grad, ``objective.loss``, backward, fused Adam): NCHW eager, which is the
authors' layout and execution and so their computation on this machine in the same minutes; NHWC eager (the
experiment's default); and each under ``torch.compile`` of the encoder and decoder. Medians of the timed steps,
compilation excluded (it happens in the warm-up).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from vae_experiments.bench.timing import matmul_gflops
from vae_experiments.bench.train_speed import plain_step
from vae_experiments.module import VAEModule
from vae_experiments.train import CONFIG_DIR, build

OVERRIDES = [
    "experiment=sos_vae",
    "dataset=synthetic",
    "dataset.shape=[1,26,26]",
    "~dataset.subset",  # a CelebA option the experiment sets; synthetic images have none
    "dataset.hflip=false",
    "dataset.n_train=64",
    "dataset.val_size=8",
    "dataset.n_test=8",
]
VARIANTS = {
    "nchw_eager": (False, False),
    "nhwc_eager": (True, False),
    "nchw_compiled": (False, True),
    "nhwc_compiled": (True, True),
}


def make_step(module: VAEModule, x: torch.Tensor, nhwc: bool, compiled: bool) -> Callable[[int], None]:
    module = copy.deepcopy(module)
    if nhwc:
        module.use_channels_last()
    if compiled:
        module.model.compile_networks()
    optimizer = torch.optim.Adam(module.model.parameters(), lr=1e-4, fused=True)
    return plain_step(module.model, module.objective, optimizer, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/sos_step_26x26.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=OVERRIDES)
    with open_dict(cfg):
        cfg.paths.output_dir = "unused"
    _, module = build(cfg)
    x = torch.rand(25, 1, 26, 26)
    steps = {name: make_step(module, x, *flags) for name, flags in VARIANTS.items()}
    for step in steps.values():
        for i in range(args.warmup):
            step(i)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step(i)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "setup": "experiment=sos_vae at 1x26x26, B=25, plain loop, fused Adam; variants interleaved step by step",
        "median_step_s": {name: round(m, 4) for name, m in median.items()},
        "ours_default_over_authors_layout": round(median["nhwc_eager"] / median["nchw_eager"], 4),
        "authors_reference9_s": 0.69,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "machine": {"matmul_gflops": round(matmul_gflops(), 1), "torch": torch.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
