"""Start-up time of ``vae-train`` for what must answer at once: ``--help``, ``--cfg job``, a config error (one of
Hydra's, one of the checks') and a TAB completion (Hydra's bash protocol: ``COMP_LINE`` plus ``-sc query=bash``).

Two entry points, interleaved round by round on the same commands: the console script's light one
(``vae_experiments.cli.train``, which imports torch and Lightning only when a run starts) and the runner's module
(``python -m vae_experiments.train``, which imports them up front, as ``vae-train`` did before). Each figure is the
whole process's wall time, start-up included; the JSON holds every run, the medians and their ratio (light / full).

    PYTHONPATH=. python scripts/bench_cli.py --rounds 5 --out benchmarks/cli_startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIGHT = [sys.executable, "-c", "import sys; sys.argv[0] = 'vae-train'; from vae_experiments.cli import train; train()"]
FULL = [sys.executable, "-m", "vae_experiments.train"]
COMMANDS: dict[str, tuple[list[str], dict[str, str]]] = {
    "--help": (["--help"], {}),
    "--cfg job": (["--cfg", "job"], {}),
    "config error (posterior=rh0)": (["posterior=rh0"], {}),
    "config error (optimizer.lr=-1)": (["optimizer.lr=-1"], {}),
    "TAB completion (posterior=)": (["-sc", "query=bash"], {"COMP_LINE": "vae-train posterior=", "COMP_POINT": "20"}),
}


def wall_seconds(command: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/cli_startup.json"))
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    base_env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    results = {}
    with tempfile.TemporaryDirectory() as cwd:
        for name, (extra, env_extra) in COMMANDS.items():
            env = {**base_env, **env_extra}
            runs: dict[str, list[float]] = {"light": [], "full": []}
            run_dir = [f"hydra.run.dir={cwd}/run"] if "error" in name else []
            wall_seconds([*LIGHT, *extra, *run_dir], env, cwd)  # warm the file cache, not counted
            for _ in range(args.rounds):
                runs["light"].append(wall_seconds([*LIGHT, *extra, *run_dir], env, cwd))
                runs["full"].append(wall_seconds([*FULL, *extra, *run_dir], env, cwd))
            light, full = statistics.median(runs["light"]), statistics.median(runs["full"])
            results[name] = {"light_s": light, "full_s": full, "ratio": light / full, "runs": runs}
            print(f"{name:34s} light {light:6.2f} s   full {full:6.2f} s   ratio {light / full:.2f}")
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rounds": args.rounds, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
