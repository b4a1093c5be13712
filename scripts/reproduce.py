"""One command per paper variant: train its arms over seeds, then write its results table with intervals.

    python scripts/reproduce.py VARIANT --scale smoke|cpu|overnight|gpu [--table NAME] [--out DIR] [--jobs N]
                                [--dry-run]

VARIANT is one of rho_vae, sos_vae, vlae, soft_intro_vae. ``scripts/reproduce_specs/VARIANT.yaml`` holds its tables
(arms as ``vae-train`` overrides with their relative ``cost``, which runs first; the metrics shown, the paper's figures,
the arms compared) and its scales (per table
the overrides of every arm, ``arm_overrides`` of one arm, and the evaluations below): ``smoke`` (about a minute, a check
of the machinery), ``cpu`` (what a 2-core CPU does in about 45 minutes, its ``about`` saying what that settles and
what it cannot), ``overnight`` where a spec has one (a CPU protocol of hours, for a claim the ``cpu`` budget cannot
settle) and ``gpu`` (the paper's protocol on one GPU). Each (table, arm, seed) is one
``python -m vae_experiments.train`` process with its own run folder, ``--jobs`` of them at once (each with
max(1, cores // jobs) torch threads unless OMP_NUM_THREADS is set); a finished run (its folder holds
``metrics.json``) is not run again, so a re-launch completes what was left. SIGTERM or SIGINT (Ctrl-C) stops the
command with every run resumable (``Children``; a run stopped while testing continues after its last test batch):
a protocol of hours can run in pieces. Per table, as the spec asks:

* ``nll_k``: the NLL of each run's last checkpoint at each k (``vae_experiments.evaluate`` with
  ``eval.nll_samples=k`` and the run's seed; at the run's own k, the run's own test NLL), the curve over k that
  shows whether the estimate has converged;
* ``coherence``: residual lag-1 autocorrelation of samples and of test reconstructions (``scripts/sos_results.py``),
  picture grids of seed 0 under ``OUT/grids``;
* ``fid_floor``: FID between N training and the same N test images (real vs real at the runs' N: about what a
  model that samples the data distribution itself would get, FID's finite-sample bias at this N), kept in
  ``OUT/fid_floor_TABLE.json``;
* ``dequantized_levels``: the 8-bit bound in bits/dim, (NLL + D ln L) / (D ln 2), of a density on dequantised data.

Written to ``OUT`` (default ``outputs/reproduce/VARIANT-SCALE``): ``results.md`` and ``results.json``: per arm the
mean and 95% t interval over seeds of each metric with the paper's figure beside it, per compared pair the paired
difference with its 95% interval and the paired t test's p ("not shown" when the interval contains 0), the number of
test images and importance samples, and the wall time of each run and of the whole command (summed over the
launches that filled ``OUT``; ``reproduce_wall.json`` files rewritten every 30 s, so a launch killed outright loses
at most that much of its record).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vae_experiments.atomic import write_text_atomically

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "scripts" / "reproduce_specs"
VARIANTS = tuple(sorted(p.stem for p in SPECS.glob("*.yaml")))
SCALES = ("smoke", "cpu", "overnight", "gpu")
REQUIRED_SCALES = ("smoke", "cpu", "gpu")  # every spec has these; overnight only where cpu cannot settle a claim
# no progress bars or picture grids in unattended runs (the grids' PixelCNN sampling alone takes a minute)
QUIET = ["callbacks.progress_bar=null", "callbacks.image_grids=null", "trainer.enable_progress_bar=false"]
WALL = "reproduce_wall.json"
COHERENCE = "coherence.json"


@dataclass
class Job:
    """One training run of one arm and seed, and the evaluations its table asks for."""

    table: str
    arm: str
    seed: int
    folder: Path
    overrides: list[str]
    nll_k: list[int] = field(default_factory=list)
    coherence_n: int | None = None
    grids: Path | None = None

    def train_command(self) -> list[str]:
        run = [f"hydra.run.dir={self.folder}", f"seed={self.seed}", "resume=true"]
        return [sys.executable, "-m", "vae_experiments.train", *self.overrides, *QUIET, *run]

    def own_k(self) -> int | None:
        """The k of the run's own test NLL (its saved config's ``eval.nll_samples``), once it has trained."""
        saved = self.folder / ".hydra" / "config.yaml"
        return int(OmegaConf.load(saved).eval.nll_samples) if saved.is_file() else None

    def eval_command(self, k: int) -> list[str]:
        """``vae-eval`` of the last checkpoint at k importance samples, with one ELBO draw (only its NLL is read) and
        the run's memory budget per decoder pass."""
        ckpt = self.folder / "checkpoints" / "last.ckpt"
        saved = self.folder / ".hydra" / "config.yaml"
        own = [f"eval.nll_max_rows={OmegaConf.load(saved).eval.nll_max_rows}"] if saved.is_file() else []
        quiet = 'overrides=["eval.fid.enabled=false","eval.toy2d.enabled=false"]'
        out = f"hydra.run.dir={self.folder / f'nll_k{k}'}"
        evaluate = [sys.executable, "-m", "vae_experiments.evaluate", f"ckpt_path={ckpt}", f"eval.nll_samples={k}"]
        return [*evaluate, "eval.elbo_samples=1", *own, quiet, out]

    def coherence_command(self) -> list[str]:
        grids = ["--grids", str(self.grids)] if self.grids is not None else []
        script = str(ROOT / "scripts" / "sos_results.py")
        return [sys.executable, script, str(self.folder), "--n", str(self.coherence_n), *grids]


class RunFailed(Exception):
    """A child process exited non-zero; the message names its log."""


def child_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


class Stopped(Exception):
    """The command was signalled before this child started."""


class Children:
    """Starts the child processes, each in its own session so that a terminal's Ctrl-C reaches this command only,
    which passes a SIGTERM or SIGINT on, once, to every running child (``vae-train`` then stops with its run
    resumable) and starts no other: the same command run again continues where it stopped."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._running: set[subprocess.Popen[str]] = set()

    def handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        for child in list(self._running):
            child.send_signal(signum)

    def run_logged(self, command: list[str], log: Path, env: dict[str, str]) -> str:
        """Run ``command`` with stdout and stderr appended to ``log``; return its stdout; raise ``RunFailed``, or
        ``Stopped`` once the command has been signalled."""
        if self.signum is not None:
            raise Stopped
        log.parent.mkdir(parents=True, exist_ok=True)
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        child = subprocess.Popen(command, cwd=ROOT, env=env, text=True, start_new_session=True, **pipes)
        self._running.add(child)
        if self.signum is not None:  # the signal came while it started
            child.send_signal(self.signum)
        try:
            stdout, stderr = child.communicate()
        finally:
            self._running.discard(child)
        with log.open("a") as f:
            f.write(f"$ {shlex.join(command)}\n{stdout}{stderr}\n")
        if child.returncode != 0:
            raise RunFailed(f"{shlex.join(command[1:4])}... exited {child.returncode}: see {log}")
        return stdout


class WallClock:
    """Adds the wall time spent inside it to ``path``'s ``wall_s`` (and, with ``count_launch``, one to its
    ``launches``), rewriting the file atomically every ``every`` seconds from a thread and once more on the way out:
    a re-launch that completes a stopped one reports what the whole table cost, and a command killed outright
    (SIGKILL, a lost node) loses at most ``every`` seconds of its record, not the launch's hours."""

    def __init__(self, path: Path, count_launch: bool = False, every: float = 30.0) -> None:
        self.path, self.every = path, every
        self.before: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"wall_s": 0.0}
        if count_launch:
            self.before["launches"] = self.before.get("launches", 0) + 1
        self.start = self.end = 0.0
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)

    def __enter__(self) -> WallClock:
        self.start = time.perf_counter()
        self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._ticker.join()
        self.end = time.perf_counter()
        self.record()

    def total(self) -> dict[str, Any]:
        """What the file holds: the launches before and this one, up to now (or its end, once it has ended)."""
        return {**self.before, "wall_s": self.before["wall_s"] + (self.end or time.perf_counter()) - self.start}

    def record(self) -> None:
        if self.path.parent.is_dir():  # a run's folder appears once it starts
            write_text_atomically(self.path, json.dumps(self.total()) + "\n")

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self.record()


def execute(job: Job, env: dict[str, str], children: Children) -> None:
    """Train (unless finished), then the evaluations not yet on disk; the wall time of what ran now, finished or
    not, is added to ``WALL``."""
    log = job.folder.parent / f"{job.folder.name}.log"
    with WallClock(job.folder / WALL):
        if not (job.folder / "metrics.json").is_file():
            children.run_logged(job.train_command(), log, env)
        for k in job.nll_k:
            if k != job.own_k() and not (job.folder / f"nll_k{k}" / "metrics.json").is_file():
                children.run_logged(job.eval_command(k), log, env)
        if job.coherence_n is not None and not (job.folder / COHERENCE).is_file():
            lines = children.run_logged(job.coherence_command(), log, env).strip().splitlines()
            (job.folder / COHERENCE).write_text(lines[-1] + "\n")


def plan(spec: DictConfig, scale: DictConfig, out: Path) -> list[Job]:
    jobs = []
    for name, at_scale in scale.tables.items():
        table = spec.tables[name]
        arm_only = at_scale.get("arm_overrides", {})
        for arm, arm_spec in table.arms.items():
            for seed in scale.seeds:
                folder = out / "runs" / name / arm / f"seed{seed}"
                grids = out / "grids" / name / arm if table.get("coherence") and seed == scale.seeds[0] else None
                jobs.append(
                    Job(
                        name,
                        arm,
                        int(seed),
                        folder,
                        [*arm_spec.overrides, *at_scale.get("overrides", []), *arm_only.get(arm, [])],
                        list(at_scale.get("nll_k", [])),
                        at_scale.get("coherence_n") if table.get("coherence") else None,
                        grids,
                    )
                )
    # the costliest arms first (an arm's relative ``cost`` in the spec, default 1; a stable sort): the last run to
    # start has only its own threads while the other runs' cores fall idle, so it had better be a short one
    return sorted(jobs, key=lambda job: -float(spec.tables[job.table].arms[job.arm].get("cost", 1)))


def test_set_size(run: Path) -> tuple[int, int]:
    """(test examples the run evaluated, values per example D), from its saved config: the test split's size, cut
    by ``trainer.limit_test_batches`` as Lightning cuts it (an int: that many batches; a float: that share)."""
    from vae_experiments.validation import build_node

    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    datamodule = build_node(cfg.dataset, "dataset", shuffle_seed=cfg.seed)
    datamodule.setup("test")
    n = len(datamodule.test_set)
    limit = cfg.trainer.get("limit_test_batches", 1.0)
    batch = datamodule.eval_batch_size
    batches = math.ceil(n / batch)
    kept = min(batches, limit) if isinstance(limit, int) else int(batches * float(limit))
    return min(n, kept * batch), math.prod(datamodule.data_shape)


def cached_fid_floor(path: Path, run: Path, n: int) -> dict[str, Any]:
    """:func:`fid_floor`, read from ``path`` when it holds the floor at ``n`` (writing the table again, after its runs
    are done, then costs seconds instead of ``n`` Inception passes on each split)."""
    if path.is_file() and (saved := json.loads(path.read_text()))["n"] == n:
        return saved
    floor = fid_floor(run, n)
    write_text_atomically(path, json.dumps(floor) + "\n")
    return floor


def fid_floor(run: Path, n: int) -> dict[str, Any]:
    """FID between the first ``n`` training images and ``n`` test images (the runs' reference, cached statistics)."""
    import torch

    from vae_experiments.metrics.fid import compute_fid
    from vae_experiments.validation import build_node

    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    datamodule = build_node(cfg.dataset, "dataset", shuffle_seed=cfg.seed)
    datamodule.setup("fit")
    train = datamodule.train_set
    if len(train) < n:
        raise RunFailed(f"the floor needs {n} training images, the split has {len(train)}")
    taken = [0]

    def real(count: int) -> torch.Tensor:
        x = train.take(torch.arange(taken[0], taken[0] + count))
        taken[0] += count
        return x

    result = compute_fid(
        real,
        datamodule.test_dataloader(),
        n,
        cfg.eval.fid.batch_size,
        model_mode="eval",
        reference_split="test",
        reference_name=datamodule.name,
        n_reference=n,
        image_shape=tuple(datamodule.data_shape),
    )
    return {"fid": result.value, "n": result.n_generated, "n_reference": result.n_reference}


def run_values(job: Job) -> dict[str, Any]:
    """The final figures of one finished run: its metrics.json, the NLL over k, coherence, the derived bound."""
    metrics = json.loads((job.folder / "metrics.json").read_text())
    values = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if (job.folder / COHERENCE).is_file():
        coherence = json.loads((job.folder / COHERENCE).read_text())
        values.update({k: coherence[k] for k in ("sample_autocorr", "data_autocorr", "mean_std")})
    for k in job.nll_k:
        at_k = metrics if k == job.own_k() else json.loads((job.folder / f"nll_k{k}" / "metrics.json").read_text())
        values[f"nll_k{k}"] = at_k["test/nll"]
    values["wall_s"] = json.loads((job.folder / WALL).read_text())["wall_s"]
    return values


def bits_bound(nll: float, dims: int, levels: int) -> float:
    """The 8-bit code length bound of a density on dequantised data: (NLL + D ln L) / (D ln 2) bits per value."""
    return (nll + dims * math.log(levels)) / (dims * math.log(2))


def summarise_table(table: DictConfig, jobs: list[Job], seeds: list[int]) -> dict[str, Any]:
    from vae_experiments.stats import paired_comparison, t_interval

    runs = {(j.arm, j.seed): run_values(j) for j in jobs}
    n_test, dims = test_set_size(jobs[0].folder)
    metrics = dict(table.metrics)
    levels = table.get("dequantized_levels")
    if levels:
        for values in runs.values():
            values["bpd_8bit"] = bits_bound(values["test/nll"], dims, int(levels))
        metrics["bpd_8bit"] = "bits/dim, 8-bit bound"
    nll_k = jobs[0].nll_k
    metrics.update({f"nll_k{k}": f"NLL, k = {k}" for k in nll_k})
    ks = {runs[key].get("test/nll_samples") for key in runs}
    rows = []
    for arm, arm_spec in table.arms.items():
        paper = dict(arm_spec.get("paper", {}))
        cells = {}
        for metric in metrics:
            values = [runs[(arm, s)][metric] for s in seeds if metric in runs[(arm, s)]]
            if values:
                interval = t_interval(values)
                cells[metric] = {"values": values, "mean": interval.mean, "half_width": interval.half_width}
            if metric in paper:
                cells.setdefault(metric, {})["paper"] = paper[metric]
        walls = [runs[(arm, s)]["wall_s"] for s in seeds]
        rows.append({"arm": arm, "seeds": list(seeds), "metrics": cells, "wall_s": walls})
    comparisons = []
    for a, b in table.get("compare", []):
        for metric in metrics:
            if all(metric in runs[(arm, s)] for arm in (a, b) for s in seeds):
                paired = paired_comparison([runs[(a, s)][metric] for s in seeds], [runs[(b, s)][metric] for s in seeds])
                diff = paired.difference
                comparisons.append(
                    {
                        "a": a,
                        "b": b,
                        "metric": metric,
                        "difference": diff.mean,
                        "half_width": diff.half_width,
                        "t": paired.t,
                        "p": paired.p,
                        "shown": paired.shown,
                    }
                )
    return {
        "caption": table.caption,
        "metric_names": metrics,
        "n_test": n_test,
        "dims": dims,
        "nll_samples": sorted(k for k in ks if k is not None),
        "nll_k": nll_k,
        "free_bits": table.get("free_bits"),
        "rows": rows,
        "comparisons": comparisons,
    }


def fmt(value: float, half_width: float | None = None) -> str:
    """``mean ± half`` to two significant digits of the half-width (in powers of ten below 1e-4)."""
    if half_width is None or not math.isfinite(half_width) or half_width == 0:
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"
    decimals = max(0, 1 - math.floor(math.log10(half_width)))
    if decimals > 5:
        return f"{value:.6g} ± {half_width:.2g}"
    return f"{value:.{decimals}f} ± {half_width:.{decimals}f}"


def ordering(rows: list[dict[str, Any]], metric: str, key: str) -> list[str] | None:
    """The arms from the largest to the smallest ``key`` ('mean' or 'paper') of ``metric``; None if one lacks it."""
    pairs = [(row["metrics"].get(metric, {}).get(key), row["arm"]) for row in rows]
    if any(v is None for v, _ in pairs):
        return None
    return [arm for _, arm in sorted(pairs, reverse=True)]


def table_markdown(name: str, summary: dict[str, Any], seeds: list[int]) -> list[str]:
    names = summary["metric_names"]
    with_paper = {m for row in summary["rows"] for m, cell in row["metrics"].items() if "paper" in cell}
    header = ["arm"]
    for metric, label in names.items():
        header.append(label)
        if metric in with_paper:
            header.append("paper")
    header.append("wall per run, min (training and evaluations)")
    ks = ", ".join(str(k) for k in summary["nll_samples"]) or "-"
    lines = [
        f"### {name}",
        "",
        summary["caption"],
        "",
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); mean ± 95% t interval over seeds; "
        f"{summary['n_test']:,} test examples; importance samples k = {ks} for the test NLL.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in summary["rows"]:
        cells = [row["arm"]]
        for metric in names:
            cell = row["metrics"].get(metric, {})
            cells.append(fmt(cell["mean"], cell["half_width"]) if "mean" in cell else "-")
            if metric in with_paper:
                cells.append(f"{cell['paper']:g}" if "paper" in cell else "-")
        walls = [w / 60 for w in row["wall_s"]]
        cells.append(f"{min(walls):.1f}-{max(walls):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    if summary["comparisons"]:
        lines += [
            "",
            "| paired difference | metric | a - b (95% interval) | p (paired t) | effect |",
            "|---|---|---|---|---|",
        ]
        for c in summary["comparisons"]:
            verdict = "shown" if c["shown"] else "not shown"
            p = f"{c['p']:.2g}" if math.isfinite(c["p"]) else "-"
            label = names[c["metric"]]
            lines.append(
                f"| {c['a']} - {c['b']} | {label} | {fmt(c['difference'], c['half_width'])} | {p} | {verdict} |"
            )
    for metric in sorted(with_paper):
        ours, paper = ordering(summary["rows"], metric, "mean"), ordering(summary["rows"], metric, "paper")
        if ours and paper:
            same = "the same order" if ours == paper else "a different order"
            lines += ["", f"{names[metric]}, largest first: ours {' > '.join(ours)}; the paper's {' > '.join(paper)} "
                      f"({same})."]  # fmt: skip
    if summary["free_bits"] is not None:
        lines += ["", kl_against_floor(summary["rows"], float(summary["free_bits"]))]
    if "fid_floor" in summary:
        f = summary["fid_floor"]
        lines += [
            "",
            f"Real-vs-real FID floor: {f['fid']:.2f} ({f['n']:,} training vs {f['n_reference']:,} test images).",
        ]
    return lines


def kl_against_floor(rows: list[dict[str, Any]], floor: float) -> str:
    """Where each arm's test KL stands against the free-bits floor: above or below it when its 95% interval is, else
    that the interval holds it; and how many seeds' KLs exceed it."""
    states = []
    for row in rows:
        cell = row["metrics"].get("test/kl")
        if not cell or "mean" not in cell:
            continue
        low, high = cell["mean"] - cell["half_width"], cell["mean"] + cell["half_width"]
        where = "above it" if low > floor else "below it" if high < floor else "the interval holds it"
        seeds = f"{sum(v > floor for v in cell['values'])} of {len(cell['values'])}"
        states.append(f"{row['arm']} {fmt(cell['mean'], cell['half_width'])}, {where} ({seeds})")
    return f"Test KL against the free-bits floor of {floor:g} nats (95% interval; seeds above it): {'; '.join(states)}."


def launched(launches: int) -> str:
    return f", summed over the {launches} launches that filled its folder" if launches > 1 else ""


def write_results(out: Path, result: dict[str, Any]) -> None:
    lines = [
        f"## {result['title']}",
        "",
        f"`{result['command']}`, scale `{result['scale']}`: {result['about']}.",
        f"Machine: {result['machine']}; {result['date']}; wall time of the command {result['wall_s'] / 60:.1f} min "
        f"({result['jobs']} jobs at once{launched(result['launches'])}).",
        "",
    ]
    for name, summary in result["tables"].items():
        lines += [*table_markdown(name, summary, result["seeds"]), ""]
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")


def machine(scale: DictConfig) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    on_gpu = any("trainer=gpu" in o for t in scale.tables.values() for o in t.get("overrides", []))
    if on_gpu and torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--scale", choices=SCALES, required=True)
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/reproduce/VARIANT-SCALE")
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default: the scale's)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--table", action="append", default=None, help="only this table of the scale (repeat for more; default: all)"
    )
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.exit(2, f"error: --jobs {args.jobs}: give at least 1\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = OmegaConf.load(SPECS / f"{args.variant}.yaml")
    if args.scale not in spec.scales:
        choices = ", ".join(spec.scales)
        print(f"error: --scale {args.scale}: {args.variant} has none; choose among {choices}", file=sys.stderr)
        return 2
    scale = spec.scales[args.scale]
    if args.table:
        unknown = sorted(set(args.table) - set(scale.tables))
        if unknown:
            print(f"error: --table {unknown[0]}: choose among {', '.join(scale.tables)}", file=sys.stderr)
            return 2
        scale.tables = {name: scale.tables[name] for name in scale.tables if name in args.table}
    out = (args.out or ROOT / "outputs" / "reproduce" / f"{args.variant}-{args.scale}").resolve()
    jobs = plan(spec, scale, out)
    at_once = args.jobs or int(scale.get("jobs", 1))
    if args.dry_run:
        for job in jobs:
            print(shlex.join(job.train_command()))
            for k in job.nll_k:
                print(shlex.join(job.eval_command(k)))
            if job.coherence_n is not None:
                print(shlex.join(job.coherence_command()))
        return 0
    env = child_env(at_once)
    children = Children()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, children.handle)
    out.mkdir(parents=True, exist_ok=True)
    clock = WallClock(out / WALL, count_launch=True)
    # processes of our own rather than one `-m` grid (hydra/launcher=parallel): the arms differ by whole groups and
    # deletions (~objective.beta_neg), which one grid cannot cross with the seeds, and each run has its evaluations
    with clock, ThreadPoolExecutor(max_workers=at_once) as pool:
        futures = [pool.submit(execute, job, env, children) for job in jobs]
    wall_s, launches = clock.total()["wall_s"], clock.before["launches"]
    if children.signum is not None:
        name = signal.Signals(children.signum).name
        print(f"error: stopped by {name}, every run resumable: run the same command again to continue", file=sys.stderr)
        return 128 + children.signum
    failed = [str(f.exception()) for f in futures if f.exception() is not None]
    if failed:
        for message in failed:
            print(f"error: {message}", file=sys.stderr)
        print(
            f"error: {len(failed)} of {len(jobs)} runs failed: fix them and run the same command again", file=sys.stderr
        )
        return 1
    seeds = [int(s) for s in scale.seeds]
    tables = {}
    for name in scale.tables:
        table_jobs = [j for j in jobs if j.table == name]
        tables[name] = summarise_table(spec.tables[name], table_jobs, seeds)
        if spec.tables[name].get("fid_floor"):
            n = int(json.loads((table_jobs[0].folder / "metrics.json").read_text())["test/fid_n_generated"])
            tables[name]["fid_floor"] = cached_fid_floor(out / f"fid_floor_{name}.json", table_jobs[0].folder, n)
    command = f"python scripts/reproduce.py {args.variant} --scale {args.scale}"
    command += "".join(f" --table {name}" for name in args.table or [])
    result = {
        "title": spec.title,
        "variant": args.variant,
        "scale": args.scale,
        "about": scale.about,
        "command": command,
        "machine": machine(scale),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "jobs": at_once,
        "seeds": seeds,
        "wall_s": wall_s,
        "launches": launches,
        "tables": tables,
    }
    write_results(out, result)
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
