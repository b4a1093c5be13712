"""Speed of the AF prior and the IAF posterior on the CPU, this checkout against a baseline checkout, interleaved.

    PYTHONPATH=. python scripts/bench_flows.py --baseline /path/to/old/checkout --out benchmarks/flows_zuko.json

Both checkouts' flow modules are imported into one process (the baseline's first, under its own module objects), and
every case is timed call by call, baseline and this checkout in turn (the first of the pair alternating), ``--reps``
pairs after one warm-up call each, on one thread. Each side's figure is its median; the ratio (this / baseline) is
taken pair by pair, then its median: pairing keeps the ratio meaningful when the machine's speed drifts. Cases, at
VLAE's sizes (latent 64, batch 128; the prior of ``prior=af``, 4 mean-only steps of 2 x 640; its affine form; the
IAF of ``posterior=iaf``, 2 steps of 2 x 320 with a 64-d context, from a 256-d h):

- ``af_log_prob_backward``: log p(z) and its gradient (the training step's share of the prior)
- ``af_affine_log_prob_backward``: the same with ``mean_only=false``
- ``af_sample``: 128 draws (64 sequential passes per step)
- ``iaf_rsample_log_q_backward``: z and log q(z|x) in one pass, and their gradient
- ``iaf_log_prob_of_any_z``: log q of a given z (the sequential inverse)
- ``iaf_af_training_iteration``: a whole training iteration of ``posterior=iaf prior=af`` (the digits MLP VAE,
  latent 16, batch 128), optimiser update included
- ``vlae_training_iteration``: the same for ``experiment=vlae`` (ResNet, AF prior, PixelCNN) on 28x28 binary images,
  batch 64
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from hydra import compose, initialize_config_dir

LATENT, BATCH, H = 64, 128, 256
IAF_AF = ["posterior=iaf", "prior=af"]
VLAE = ["experiment=vlae", "dataset=synthetic", "dataset.shape=[1,28,28]", "dataset.binarize=dynamic"]


def load(root: Path) -> dict[str, Callable[[], object]]:
    """The cases, built from the checkout at ``root``: its modules imported afresh (Hydra's ``_target_``s resolve
    while they are the ones in ``sys.modules``)."""
    for name in [m for m in sys.modules if m == "vae_experiments" or m.startswith("vae_experiments.")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        names = ("distributions.flow_prior", "distributions.iaf", "train", "bench.dispatch", "objectives.base")
        modules = [importlib.import_module(f"vae_experiments.{name}") for name in names]
        assert all(Path(m.__file__).is_relative_to(root) for m in modules), modules  # this checkout's code
        return cases(*modules)
    finally:
        sys.path.remove(str(root))


def training_iteration(
    train: ModuleType, dispatch: ModuleType, base: ModuleType, overrides: list[str], batch: int
) -> Callable[[], object]:
    """One whole training iteration (loss, backward, optimiser update) of the run ``overrides`` configure."""
    with initialize_config_dir(config_dir=train.CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    torch.manual_seed(0)
    _, module = train.build(cfg)
    module.model.train()
    ctx = dispatch.iteration_context(module)
    x = dispatch.example_batch(module, batch)
    return lambda: base.run_iteration(module.objective, ctx, x)


def cases(
    flow_prior: ModuleType, iaf: ModuleType, train: ModuleType, dispatch: ModuleType, base: ModuleType
) -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    prior = flow_prior.AutoregressiveFlowPrior(LATENT)
    affine = flow_prior.AutoregressiveFlowPrior(LATENT, mean_only=False)
    posterior = iaf.IAFPosterior(H, LATENT)
    z, h = torch.randn(BATCH, LATENT), torch.randn(BATCH, H)
    any_z = torch.randn(BATCH, LATENT)

    def iaf_rsample() -> None:
        zq, log_q = posterior(h).rsample_and_log_prob()
        (zq.sum() + log_q.sum()).backward()

    def iaf_any_z() -> None:
        with torch.no_grad():
            posterior(h).log_prob(any_z)

    def af_sample() -> None:
        with torch.no_grad():
            prior.sample(BATCH)

    return {
        "af_log_prob_backward": lambda: prior.log_prob(z).sum().backward(),
        "af_affine_log_prob_backward": lambda: affine.log_prob(z).sum().backward(),
        "af_sample": af_sample,
        "iaf_rsample_log_q_backward": iaf_rsample,
        "iaf_log_prob_of_any_z": iaf_any_z,
        "iaf_af_training_iteration": training_iteration(train, dispatch, base, IAF_AF, BATCH),
        "vlae_training_iteration": training_iteration(train, dispatch, base, VLAE, 64),
    }


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="root of the checkout to compare against")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/flows_zuko.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    roots = {"baseline": args.baseline.resolve(), "this": Path(__file__).resolve().parent.parent}
    sides = {side: load(root) for side, root in roots.items()}
    times: dict[str, dict[str, list[float]]] = {side: {name: [] for name in sides["this"]} for side in sides}
    for name in sides["this"]:
        for side in sides:
            sides[side][name]()  # warm-up
        for rep in range(args.reps):
            order = ["baseline", "this"] if rep % 2 == 0 else ["this", "baseline"]
            for side in order:
                times[side][name].append(timed(sides[side][name]))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 torch thread",
        "torch": torch.__version__,
        "reps": args.reps,
        "cases": {},
    }
    for name in sides["this"]:
        ratios = [t / b for t, b in zip(times["this"][name], times["baseline"][name], strict=True)]
        result["cases"][name] = {
            "baseline_median_s": round(statistics.median(times["baseline"][name]), 5),
            "this_median_s": round(statistics.median(times["this"][name]), 5),
            "ratio_this_to_baseline": round(statistics.median(ratios), 3),
            "ratio_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)[::2]],
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
