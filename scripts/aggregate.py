"""Summarise a sweep folder: ``python scripts/aggregate.py multirun/train/DATE [--out DIR]``.

Reads every job's ``.hydra/overrides.yaml`` and ``metrics.json``; groups the jobs by the overrides that differ between
them, except ``seed``; writes ``results.md`` and ``results.csv`` (mean +- std over the seeds of each group, the number
of finished and failed jobs), ``metric_<name>.png`` (each final metric per group, with its spread over seeds) and
``curve_<name>.png`` (training curves from each job's CSV logger, ``csv/metrics.csv``, one colour per group).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from omegaconf import OmegaConf

SEED_KEYS = {"seed"}
CURVES = ("train/loss_step", "train/elbo_step", "val/elbo", "val/loss")


def load_jobs(sweep: Path) -> list[dict]:
    """One dict per job folder: its overrides (key -> value), its final metrics (None when it did not finish)."""
    jobs = []
    for hydra_dir in sorted(sweep.glob("*/.hydra"), key=lambda p: p.parent.name):
        folder = hydra_dir.parent
        overrides = dict(o.lstrip("+~").split("=", 1) for o in OmegaConf.load(hydra_dir / "overrides.yaml"))
        path = folder / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else None
        jobs.append({"folder": folder, "overrides": overrides, "metrics": metrics})
    return jobs


def group_keys(jobs: list[dict]) -> list[str]:
    """The override keys whose values differ between jobs, without the seed."""
    keys = sorted({k for job in jobs for k in job["overrides"]} - SEED_KEYS)
    return [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1]


def scalar_metrics(jobs: list[dict]) -> list[str]:
    names = {k for job in jobs if job["metrics"] for k, v in job["metrics"].items() if isinstance(v, int | float)}
    return sorted(names)


def summarise(jobs: list[dict]) -> tuple[list[str], list[str], list[dict]]:
    keys, names = group_keys(jobs), scalar_metrics(jobs)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for job in jobs:
        groups[tuple(job["overrides"].get(k, "") for k in keys)].append(job)
    rows = []
    for label, members in sorted(groups.items()):
        done = [job["metrics"] for job in members if job["metrics"]]
        row = {"group": dict(zip(keys, label, strict=True)), "finished": len(done), "failed": len(members) - len(done)}
        for name in names:
            values = [float(m[name]) for m in done if name in m and math.isfinite(float(m[name]))]
            row[name] = values
        rows.append(row)
    return keys, names, rows


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_tables(out: Path, keys: list[str], names: list[str], rows: list[dict]) -> None:
    header = [*keys, "finished", "failed", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys, "finished", "failed", *(f"{n}_{s}" for n in names for s in ("mean", "std"))])
        for row in rows:
            stats = [mean_std(row[n]) for n in names]
            cells = [f"{m:.4f} ± {s:.4f}" if row[n] else "-" for n, (m, s) in zip(names, stats, strict=True)]
            lines.append(
                "| " + " | ".join([*row["group"].values(), str(row["finished"]), str(row["failed"]), *cells]) + " |"
            )
            writer.writerow([*row["group"].values(), row["finished"], row["failed"], *(x for ms in stats for x in ms)])
    (out / "results.md").write_text("\n".join(lines) + "\n")


def label(group: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in group.items()) or "all"


def plot_metrics(out: Path, names: list[str], rows: list[dict]) -> None:
    for name in names:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows)), 3.5))
        for i, row in enumerate(rows):
            if row[name]:
                ax.scatter([i] * len(row[name]), row[name], color="C0", alpha=0.5, s=12)
                mean, std = mean_std(row[name])
                ax.errorbar([i], [mean], yerr=[std], color="k", marker="_", markersize=14, capsize=4)
        ax.set_xticks(range(len(rows)), [label(r["group"]) for r in rows], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(name)
        fig.tight_layout()
        fig.savefig(out / f"metric_{name.replace('/', '_')}.png", dpi=100)
        plt.close(fig)


def read_curves(folder: Path) -> dict[str, tuple[list[float], list[float]]]:
    """``{metric: (steps, values)}`` from a job's CSV logger file (rows hold only the metrics logged at that time)."""
    path = folder / "csv" / "metrics.csv"
    curves: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    if path.is_file():
        with path.open() as f:
            for record in csv.DictReader(f):
                for name in CURVES:
                    if record.get(name):
                        curves[name][0].append(float(record["step"]))
                        curves[name][1].append(float(record[name]))
    return curves


def plot_curves(out: Path, keys: list[str], jobs: list[dict]) -> None:
    labels = sorted({label({k: job["overrides"].get(k, "") for k in keys}) for job in jobs})
    colour = {name: f"C{i % 10}" for i, name in enumerate(labels)}
    per_job = [(job, read_curves(job["folder"])) for job in jobs]
    for name in CURVES:
        if not any(name in curves for _, curves in per_job):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        shown = set()
        for job, curves in per_job:
            if name in curves:
                group = label({k: job["overrides"].get(k, "") for k in keys})
                ax.plot(*curves[name], color=colour[group], alpha=0.7, label=None if group in shown else group)
                shown.add(group)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"curve_{name.replace('/', '_')}.png", dpi=100)
        plt.close(fig)


def aggregate(sweep: Path, out: Path | None = None) -> Path:
    """Write the tables and plots for ``sweep`` into ``out`` (default: the sweep folder); return ``out``."""
    out = out or sweep
    out.mkdir(parents=True, exist_ok=True)
    jobs = load_jobs(sweep)
    if not jobs:
        raise SystemExit(f"no job folders (*/.hydra) in {sweep}")
    keys, names, rows = summarise(jobs)
    write_tables(out, keys, names, rows)
    plot_metrics(out, names, rows)
    plot_curves(out, keys, jobs)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep folder)")
    args = parser.parse_args(argv)
    out = aggregate(args.sweep_dir, args.out)
    print((out / "results.md").read_text())
    print(f"tables and plots in {out}")


if __name__ == "__main__":
    main()
