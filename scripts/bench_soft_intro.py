"""Training images per second of one full Soft-IntroVAE iteration (encoder step + decoder step), data loading excluded.

    python scripts/bench_soft_intro.py --arch cifar10 --batch 32 --threads 2 --warmup 3 --steps 10
    python scripts/bench_soft_intro.py --arch fmnist --batch 128

Builds the ``experiment=soft_intro_vae`` / ``_fmnist`` model (IntroVAE nets, Gaussian with fixed sigma, beta_neg 256,
gamma_r 1e-8) and times ``SoftIntroVAE.training_step`` on random images with the project's fused Adam; prints one
JSON line with the median step time and images/s (and writes it under ``--out`` when given). ``--authors-style 1``
interleaves the authors' iteration (docs/soft_intro_vae.md#training-step), re-created NCHW with for-loop Adam, step by
step with ours: the same-minutes yardstick for the authors' figures (BENCHMARKS.md, The authors' figures) on this
drifting machine.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from scripts.soft_intro_authors_style import authors_step
from vae_experiments.bench.timing import clock, gpu_busy_fraction, matmul_gflops
from vae_experiments.capture import recorded_loop
from vae_experiments.distributions.likelihoods import GaussianLikelihood
from vae_experiments.distributions.posteriors import DiagonalGaussianPosterior
from vae_experiments.distributions.priors import StandardNormalPrior
from vae_experiments.model import VAE, build_model
from vae_experiments.nets.intro import IntroDecoder, IntroEncoder
from vae_experiments.objectives.base import StepContext
from vae_experiments.objectives.soft_intro import SoftIntroVAE

ARCHS = {"cifar10": ((3, 32, 32), (64, 128, 256), 128), "fmnist": ((1, 28, 28), (64, 128), 32)}


def build(arch: str, channels_last: bool) -> VAE:
    """The ``experiment=soft_intro_vae`` / ``_fmnist`` model (IntroVAE nets, Gaussian with fixed sigma^2 = 1/2)."""
    shape, channels, latent = ARCHS[arch]
    parts = {
        "encoder": partial(IntroEncoder, channels=channels, channels_last=channels_last),
        "posterior": DiagonalGaussianPosterior,
        "prior": StandardNormalPrior,
        "decoder": partial(IntroDecoder, channels=channels, channels_last=channels_last),
        "likelihood": partial(GaussianLikelihood, sigma="fixed", sigma_init=math.sqrt(0.5)),
    }
    return build_model(parts, shape, latent)


def our_step(model: VAE, x: torch.Tensor, bf16: bool, capture: bool) -> Callable[[int], None]:
    """``SoftIntroVAE.training_step`` with the project's optimiser (fused Adam, lr 2e-4); with ``capture`` (CUDA),
    recorded once as a CUDA graph and replayed, as the runner does under ``trainer=gpu``."""
    objective = SoftIntroVAE(beta_neg=256.0, recon_offset=0.5 * math.log(math.pi)).to(x.device)
    optimizers = objective.configure_optimizers(model, partial(torch.optim.Adam, lr=2e-4, fused=True))
    recorder = recorded_loop(optimizers) if capture else None

    def iteration(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return objective.training_step(StepContext(model, optimizers), batch).logs

    def step(i: int) -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            if recorder is None:
                iteration(x)
            else:
                recorder(None, iteration, x)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="cifar10")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--channels-last", type=int, choices=(0, 1), default=1)
    parser.add_argument("--bf16", type=int, choices=(0, 1), default=0, help="bf16 autocast (AMX on this CPU)")
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (the GPU check: --device cuda --bf16 1 --authors-style 1)"
    )
    parser.add_argument(
        "--authors-style",
        type=int,
        choices=(0, 1),
        default=0,
        help="also time the authors' iteration (scripts/soft_intro_authors_style.py), interleaved step by step",
    )
    parser.add_argument(
        "--capture",
        type=int,
        choices=(0, 1),
        default=0,
        help="CUDA only: ours as one recorded CUDA graph",
    )
    parser.add_argument(
        "--busy-steps", type=int, default=0, help="CUDA only: also measure the GPU's busy share over this many of ours"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.capture and args.device != "cuda":
        parser.error("--capture records CUDA graphs: use it with --device cuda")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape, channels, latent = ARCHS[args.arch]
    device = torch.device(args.device)
    x = torch.rand(args.batch, *shape, device=device)
    ours = our_step(build(args.arch, bool(args.channels_last)).to(device), x, bool(args.bf16), bool(args.capture))
    steps = {"ours": ours}
    if args.authors_style:
        steps["authors_style"] = authors_step(build(args.arch, channels_last=False).to(device), x)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items():
            start = clock(device)
            step(i)
            if i >= args.warmup:
                times[name].append(clock(device) - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "workload": f"soft_intro {args.arch} channels {list(channels)} z {latent} B {args.batch}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": args.threads,
        "channels_last": bool(args.channels_last),
        "precision": "bf16 autocast" if args.bf16 else "fp32",
        "capture": bool(args.capture),
        "median_step_s": round(median["ours"], 4),
        "images_per_s": round(args.batch / median["ours"], 2),
        "steps_timed": args.steps,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "matmul_gflops": round(matmul_gflops(), 1),
    }
    if args.busy_steps:
        result["gpu_busy_fraction"] = gpu_busy_fraction(ours, args.busy_steps, device)
    if args.authors_style:
        theirs = median["authors_style"]
        result["authors_style"] = {"median_step_s": round(theirs, 4), "images_per_s": round(args.batch / theirs, 2)}
        result["ours_over_authors_style"] = round(median["ours"] / theirs, 4)
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
