"""A grid of seeds run one job after another (Hydra's basic launcher) against k jobs at once on the one device
(``hydra/launcher=parallel``): wall time and summed training throughput.

    PYTHONPATH=. python scripts/bench_grid.py --seeds 16 --jobs 4 --out benchmarks/grid_digits_cpu.json
    PYTHONPATH=. python scripts/bench_grid.py experiment=rho_vae --device cuda --seeds 16 --jobs 12 \\
        --out benchmarks/grid_rho_vae_cuda.json

Arguments with ``=`` are Hydra overrides for every job; the rest are this script's options (``--help``). Each grid is
one ``vae-train -m 'seed=range(N)'`` process. The two kinds alternate (sequential, parallel, sequential, ...)
``--repeats`` times, because this kind of machine's speed drifts within the hour; the JSON holds every grid and the
medians over repeats.

Per grid: ``wall_s``, launch to exit (start-up, training, test evaluation, every job); each job's
``train/images_per_sec`` (the median optimisation step of its fit, read from its metrics.json); and
``summed_images_per_sec``, the mean per-job rate times the number of jobs that ran at once (1, or min(k, N)): the
device's training throughput while the grid runs. Ratios, parallel against sequential, are taken per repeat (the two
grids ran back to back) and their median is reported: ``speedup_wall`` (sequential wall / parallel wall: how much
sooner the whole grid is done, the figure that counts) and ``summed_images_per_sec_ratio``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from scripts.benchmark import machine

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("sequential", "parallel")
TRAINER = {"cpu": "trainer=cpu", "cuda": "trainer=gpu"}


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=16, help="jobs in the grid: seed=0..N-1")
    p.add_argument("--jobs", type=int, default=4, help="jobs at once in the parallel grid (hydra.launcher.n_jobs)")
    p.add_argument("--repeats", type=int, default=2, help="sequential/parallel pairs, alternating")
    p.add_argument("--device", choices=tuple(TRAINER), default="cpu", help="cuda: every job on the one GPU")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (else print it)")
    args, rest = p.parse_known_args(argv)
    unknown = [a for a in rest if "=" not in a or a.startswith("-")]
    if unknown:
        p.error(f"unrecognised arguments: {' '.join(unknown)}")
    if args.seeds < 1 or args.jobs < 1 or args.repeats < 1:
        p.error("--seeds, --jobs and --repeats must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda needs a CUDA device; this machine has none")
    return args, rest


def run_grid(kind: str, args: argparse.Namespace, overrides: list[str], sweep_dir: Path) -> dict[str, Any]:
    """One ``vae-train -m`` grid in a fresh process; its wall time and every job's training throughput."""
    launcher = ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={args.jobs}"] if kind == "parallel" else []
    command = [
        sys.executable,
        "-m",
        "vae_experiments.train",
        "-m",
        *launcher,
        TRAINER[args.device],
        f"seed=range({args.seeds})",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log_path = sweep_dir.with_suffix(".log")
    load_start = os.getloadavg()
    start = time.perf_counter()
    with log_path.open("w") as log:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: the {kind} grid exited with {done.returncode}; its output is in {log_path}")
    rates = []
    for job in range(args.seeds):
        metrics = sweep_dir / str(job) / "metrics.json"
        if not metrics.is_file():
            raise SystemExit(f"error: job {job} of the {kind} grid left no metrics.json; see {sweep_dir / str(job)}")
        rate = json.loads(metrics.read_text()).get("train/images_per_sec")
        if rate is None:
            raise SystemExit(f"error: job {job} trained too few steps to time (more than 5 needed): add epochs")
        rates.append(rate)
    at_once = min(args.jobs, args.seeds) if kind == "parallel" else 1
    return {
        "kind": kind,
        "jobs_at_once": at_once,
        "wall_s": wall,
        "per_job_images_per_sec": rates,
        "summed_images_per_sec": statistics.mean(rates) * at_once,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }


def run(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "command": " ".join(["scripts/bench_grid.py", *sys.argv[1:]]),
        "machine": machine(),
        "overrides": overrides,
        "device": args.device,
        "seeds": list(range(args.seeds)),
        "jobs_at_once": args.jobs,
        "repeats": args.repeats,
        # a value set here is every job's torch thread count; unset, parallel jobs get cores // jobs each
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "grids": [],
    }
    work = Path(tempfile.mkdtemp(prefix="bench_grid_"))
    for repeat in range(args.repeats):
        for kind in KINDS:
            grid = run_grid(kind, args, overrides, work / f"{kind}_{repeat}")
            result["grids"].append({"repeat": repeat, **grid})
            print(f"repeat {repeat} {kind}: {grid['wall_s']:.1f} s, {grid['summed_images_per_sec']:.0f} img/s summed")
    shutil.rmtree(work)
    by_kind = {kind: [g for g in result["grids"] if g["kind"] == kind] for kind in KINDS}
    for kind, grids in by_kind.items():
        result[kind] = {
            "median_wall_s": statistics.median(g["wall_s"] for g in grids),
            "median_summed_images_per_sec": statistics.median(g["summed_images_per_sec"] for g in grids),
            "median_per_job_images_per_sec": statistics.median(r for g in grids for r in g["per_job_images_per_sec"]),
        }
    pairs = list(zip(by_kind["sequential"], by_kind["parallel"], strict=True))
    speedups = [s["wall_s"] / p["wall_s"] for s, p in pairs]
    ratios = [p["summed_images_per_sec"] / s["summed_images_per_sec"] for s, p in pairs]
    result["speedup_wall"] = statistics.median(speedups)
    result["speedup_wall_per_repeat"] = speedups
    result["summed_images_per_sec_ratio"] = statistics.median(ratios)
    result["summed_images_per_sec_ratio_per_repeat"] = ratios
    return result


def summary(result: dict[str, Any]) -> str:
    seq, par = result["sequential"], result["parallel"]
    return (
        f"{len(result['seeds'])} seeds on {result['device']}, {result['overrides'] or 'default job'}: "
        f"sequential {seq['median_wall_s']:.1f} s ({seq['median_summed_images_per_sec']:.0f} img/s), "
        f"{result['jobs_at_once']} at once {par['median_wall_s']:.1f} s "
        f"({par['median_summed_images_per_sec']:.0f} img/s summed, {par['median_per_job_images_per_sec']:.0f} a job); "
        f"grid done x{result['speedup_wall']:.2f} sooner, summed img/s x{result['summed_images_per_sec_ratio']:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    result = run(args, overrides)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    else:
        print(text)
    print(summary(result))


if __name__ == "__main__":
    main()
