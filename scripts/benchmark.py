"""Speed of one experiment: the runner's training step against a plain PyTorch loop, the NLL, sampling, memory.

    PYTHONPATH=. python scripts/benchmark.py experiment=rho_vae --steps 50 --out benchmarks/rho.json
    PYTHONPATH=. python scripts/benchmark.py encoder.hidden=[512] decoder.hidden=[512] ... --nll-only

Arguments with ``=`` are Hydra overrides of ``conf/train.yaml``; the rest are this script's options (``--help``).
Timings are medians after warm-up; the runner/plain ratio is a median of per-round ratios measured back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from vae_experiments.bench.nll_speed import chunk_sweep, nll_speed, sampling_speed
from vae_experiments.bench.timing import matmul_gflops, median, peak_memory_mib
from vae_experiments.bench.train_speed import compare, quiet_lightning, take_batches
from vae_experiments.runtime import configure_runtime
from vae_experiments.train import CONFIG_DIR, build


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50, help="timed training steps per round (after warm-up)")
    p.add_argument("--warmup", type=int, default=10, help="untimed training steps at the start of every round")
    p.add_argument("--rounds", type=int, default=3, help="plain/runner rounds, alternating")
    p.add_argument("--nll-only", action="store_true", help="measure the NLL (and sampling) only")
    p.add_argument("--skip-nll", action="store_true", help="measure training (and sampling) only")
    p.add_argument("--nll-images", type=int, default=1000, help="test images for the vectorised NLL")
    p.add_argument("--nll-k", type=int, default=None, help="importance samples (default: eval.nll_samples)")
    p.add_argument("--nll-loop-images", type=int, default=50, help="test images for the per-example reference loop")
    p.add_argument(
        "--nll-rows",
        type=str,
        default=None,
        help="comma-separated eval.nll_max_rows values: time the NLL at each, interleaved (no loop)",
    )
    p.add_argument("--sample-n", type=int, default=64, help="images per timed call of model.sample")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (else print it)")
    args, rest = p.parse_known_args(argv)
    unknown = [a for a in rest if "=" not in a or a.startswith("-")]
    if unknown:
        p.error(f"unrecognised arguments: {' '.join(unknown)}")
    return args, rest


def compose_cfg(overrides: list[str], out: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = out
        cfg.hydra.runtime.output_dir = out
    HydraConfig.instance().set_config(cfg)
    return cfg


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git_commit": commit,
        "load_average_start": os.getloadavg(),
        "matmul_gflops": matmul_gflops(),
    }


def test_images(datamodule: Any, n: int, device: torch.device) -> torch.Tensor:
    datamodule.setup("test")
    parts, have = [], 0
    for x in datamodule.test_dataloader():
        parts.append(x)
        have += x.shape[0]
        if have >= n:
            break
    return torch.cat(parts)[:n].to(device)


def run(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    configure_runtime()
    result: dict[str, Any] = {"command": " ".join(["scripts/benchmark.py", *sys.argv[1:]]), "machine": machine()}
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_cfg(overrides, out)
        result["overrides"] = overrides
        L.seed_everything(cfg.seed, verbose=False)
        datamodule, module = build(cfg)
        device = torch.device("cuda" if cfg.trainer.accelerator in ("gpu", "cuda") else "cpu")
        datamodule.prepare_data()
        datamodule.setup("fit")
        if not args.nll_only:
            n = args.warmup + args.steps + 1
            batches, load_s = take_batches(datamodule.train_dataloader(), n, device)
            result["data_loading"] = {"median_batch_s": median(load_s), "batches": len(load_s)}
            result["train"] = compare(cfg, module, batches, args.warmup, args.rounds)
        model = module.model.to(device)
        if not args.skip_nll:
            k = args.nll_k or cfg.eval.nll_samples
            images = test_images(datamodule, args.nll_images, device)
            batch = datamodule.eval_batch_size
            precision = str(cfg.trainer.get("precision", "32-true"))
            if args.nll_rows:
                rows = [int(r) for r in args.nll_rows.split(",")]
                result["nll_chunks"] = chunk_sweep(model, images, k, rows, batch, args.rounds)
            else:
                loop = args.nll_loop_images
                result["nll"] = nll_speed(model, images, k, cfg.eval.nll_max_rows, batch, loop, precision)
        if not model.autoregressive or args.sample_n <= 16:
            result["sampling"] = sampling_speed(model, args.sample_n)
        result["peak_memory"] = peak_memory_mib(device)
        result["config"] = OmegaConf.to_container(cfg, resolve=False)
        result["config"].pop("hydra", None)
    result["machine"]["load_average_end"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    result = run(args, overrides)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(summary(result))


def summary(result: dict[str, Any]) -> str:
    lines = [result["command"], f"load average {result['machine']['load_average_start']}"]
    if "train" in result:
        t = result["train"]
        lines.append(
            f"train B={t['batch_size']}: plain {t['plain']['median_step_s'] * 1e3:.2f} ms "
            f"({t['plain']['images_per_sec']:.0f} img/s), runner {t['runner']['median_step_s'] * 1e3:.2f} ms "
            f"({t['runner']['images_per_sec']:.0f} img/s), runner/plain {t['runner_over_plain']:.3f} "
            f"(rounds {', '.join(f'{r:.3f}' for r in t['runner_over_plain_per_round'])}); "
            f"CPU time runner/plain {t['runner_over_plain_cpu']:.3f}; "
            f"data {result['data_loading']['median_batch_s'] * 1e3:.2f} ms/batch"
        )
    if "nll" in result:
        n = result["nll"]
        lines.append(
            f"NLL k={n['k']}: {n['vectorised']['seconds_per_1000_images']:.2f} s/1000 images "
            f"(loop {n['per_example_loop']['seconds_per_1000_images']:.2f}, x{n['speedup']:.1f}); "
            f"NLL {n['vectorised']['nll']:.3f}, difference {n['mean_difference_nats']:+.4f} "
            f"+- {n['difference_standard_error_nats']:.4f} nats"
        )
    if "nll_chunks" in result:
        c = result["nll_chunks"]
        sizes = ", ".join(
            f"{r}: {s:.2f} s (max diff {c['max_abs_difference_nats'][r]:.1e})"
            for r, s in c["seconds_per_1000_images"].items()
        )
        lines.append(f"NLL k={c['k']} per 1000 images by eval.nll_max_rows: {sizes}")
    if "sampling" in result:
        lines.append(f"sampling {result['sampling']['n']} images: {result['sampling']['median_s'] * 1e3:.1f} ms")
    lines.append(f"peak memory {result['peak_memory']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
