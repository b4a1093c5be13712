"""scripts/reproduce.py end to end at ``--scale smoke``: the table's figures are the per-run metrics.json summarised."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy import stats

from scripts import reproduce
from tests.conftest import compose_cfg
from tests.process_helpers import PAUSE_MARKER, signal_when
from vae_experiments.stats import t_interval

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce.py"


def run_script(variant: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, str(SCRIPT), variant, "--scale", "smoke", "--out", str(out), *extra]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def check_table(out: Path, variant: str) -> dict:
    """Every cell of results.json against the runs' own metrics.json: mean, t interval, paired difference and p."""
    result = json.loads((out / "results.json").read_text())
    assert result["variant"] == variant and result["scale"] == "smoke" and result["wall_s"] > 0
    seeds = result["seeds"]
    assert len(seeds) >= 3
    for name, table in result["tables"].items():
        runs = {}
        for row in table["rows"]:
            for seed in seeds:
                folder = out / "runs" / name / row["arm"] / f"seed{seed}"
                runs[(row["arm"], seed)] = json.loads((folder / "metrics.json").read_text())
            assert len(row["wall_s"]) == len(seeds) and min(row["wall_s"]) > 0
            for metric, cell in row["metrics"].items():
                if metric.startswith("test/") and "mean" in cell:
                    values = [runs[(row["arm"], s)][metric] for s in seeds]
                    assert cell["values"] == values
                    assert cell["mean"] == pytest.approx(sum(values) / len(values), rel=1e-12)
                    low, _ = stats.t.interval(0.95, len(values) - 1, loc=cell["mean"], scale=stats.sem(values))
                    assert cell["half_width"] == pytest.approx(cell["mean"] - low, rel=1e-9)
        assert table["nll_samples"] == sorted({run["test/nll_samples"] for run in runs.values()})
        for c in table["comparisons"]:
            if not c["metric"].startswith("test/"):
                continue
            a = [runs[(c["a"], s)][c["metric"]] for s in seeds]
            b = [runs[(c["b"], s)][c["metric"]] for s in seeds]
            assert c["difference"] == pytest.approx(sum(x - y for x, y in zip(a, b, strict=True)) / len(a), rel=1e-9)
            assert c["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
            assert c["shown"] == (abs(c["difference"]) > c["half_width"])
    markdown = (out / "results.md").read_text()
    assert result["command"] in markdown
    for name, table in result["tables"].items():
        assert f"### {name}" in markdown and f"{table['n_test']:,} test examples" in markdown
        for row in table["rows"]:
            assert f"| {row['arm']} |" in markdown
        for c in table["comparisons"]:
            verdict = "shown" if c["shown"] else "not shown"
            assert f"| {c['a']} - {c['b']} | {table['metric_names'][c['metric']]} |" in markdown
            assert f"| {verdict} |" in markdown
    return result


def test_rho_vae_smoke_table_summarises_its_runs_and_a_relaunch_completes_a_failed_one(tmp_path: Path) -> None:
    # one run's folder holds a broken checkpoint: that run fails, the others finish, no table is written
    broken = tmp_path / "runs" / "mlp" / "diagonal" / "seed0"
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "checkpoints" / "last.ckpt").write_text("not a checkpoint")
    done = run_script("rho_vae", tmp_path)
    assert done.returncode == 1
    assert "diagonal/seed0.log" in done.stderr and "1 of 6 runs failed" in done.stderr
    assert not (tmp_path / "results.json").exists()
    assert (tmp_path / "runs" / "mlp" / "rho" / "seed2" / "metrics.json").is_file()
    # the same command again, once the broken folder is gone, trains that run only and writes the table
    for path in sorted(broken.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    stamp = (tmp_path / "runs" / "mlp" / "rho" / "seed0" / "metrics.json").stat().st_mtime_ns
    done = run_script("rho_vae", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "mlp" / "rho" / "seed0" / "metrics.json").stat().st_mtime_ns == stamp
    result = check_table(tmp_path, "rho_vae")
    table = result["tables"]["mlp"]
    # the wall time is the table's, both launches: the failed one trained five of the six runs
    assert result["launches"] == 2 and "summed over the 2 launches" in (tmp_path / "results.md").read_text()
    assert result["wall_s"] >= max(w for row in table["rows"] for w in row["wall_s"])
    # 100 test images (one batch of eval_batch_size 100), k = 10, both arms, the paper's Fig. 1 figures beside them
    assert table["n_test"] == 100 and table["nll_samples"] == [10]
    assert [row["arm"] for row in table["rows"]] == ["diagonal", "rho"]
    assert [row["metrics"]["test/loss"]["paper"] for row in table["rows"]] == [241.1, 221.6]
    assert {(c["a"], c["b"]) for c in table["comparisons"]} == {("rho", "diagonal")}


@pytest.mark.parametrize("variant", reproduce.VARIANTS)
def test_every_scale_composes_each_arm_with_3_seeds_and_compares_arms_it_has(variant: str, tmp_path: Path) -> None:
    spec = reproduce.OmegaConf.load(reproduce.SPECS / f"{variant}.yaml")
    assert set(reproduce.REQUIRED_SCALES) <= set(spec.scales) <= set(reproduce.SCALES)
    for scale_name, scale in spec.scales.items():
        assert len(scale.seeds) >= 3 and scale.about
        jobs = reproduce.plan(spec, scale, tmp_path)
        arms = {name: list(spec.tables[name].arms) for name in scale.tables}
        assert len(jobs) == len(scale.seeds) * sum(len(a) for a in arms.values())
        for name, table_arms in arms.items():
            for a, b in spec.tables[name].get("compare", []):
                assert a in table_arms and b in table_arms
        for job in jobs:
            if job.seed == scale.seeds[0]:
                # Hydra refuses an override whose key or group option does not exist
                cfg = compose_cfg([*job.overrides, *reproduce.QUIET, f"seed={job.seed}"], tmp_path)
                assert cfg.seed == job.seed, (variant, scale_name, job.arm)


def test_unknown_variant_is_refused_before_anything_runs(tmp_path: Path) -> None:
    done = run_script("beta_vae", tmp_path)
    assert done.returncode == 2 and "invalid choice" in done.stderr
    assert not any(tmp_path.iterdir())


def test_a_signal_stops_the_running_run_resumable_and_starts_no_other(tmp_path: Path) -> None:
    # one job at a time; the first run waits at its second training step, where the command is sent SIGTERM
    out = tmp_path / "out"
    marker = tmp_path / PAUSE_MARKER
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.update(PAUSE_AT="step:1", PAUSE_MARKER=str(marker))
    script = ROOT / "tests" / "paused_reproduce.py"
    command = [sys.executable, str(script), "rho_vae", "--scale", "smoke", "--out", str(out), "--jobs", "1"]
    log, errors = tmp_path / "reproduce.log", tmp_path / "reproduce.err"
    with log.open("wb") as stdout, errors.open("wb") as stderr:
        parent = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
    # to the command only: its runs are in sessions of their own
    assert signal_when(parent, marker.is_file, signal.SIGTERM, log) == 143
    stderr = errors.read_text()
    assert stderr == "error: stopped by SIGTERM, every run resumable: run the same command again to continue\n"
    run = out / "runs" / "mlp" / "diagonal" / "seed0"
    assert [p for p in (out / "runs").glob("*/*/seed*") if p.is_dir()] == [run]  # no other run started
    assert "stopped by SIGTERM; resume with:" in (run.parent / "seed0.log").read_text()  # passed on, and heeded
    assert not (run / "metrics.json").exists() and not (out / "results.json").exists()
    assert json.loads((run / "reproduce_wall.json").read_text())["wall_s"] > 0
    assert json.loads((out / "reproduce_wall.json").read_text())["launches"] == 1


def test_a_command_killed_outright_keeps_its_wall_time_but_the_last_tick(tmp_path: Path) -> None:
    # SIGKILL runs no handler: what the file holds is what the clock's thread wrote before it
    path = tmp_path / reproduce.WALL
    path.write_text(json.dumps({"wall_s": 100.0, "launches": 2}))
    code = (
        "import sys, time; from scripts.reproduce import WallClock\n"
        f"with WallClock(__import__('pathlib').Path({str(path)!r}), count_launch=True, every=0.1):\n"
        "    print('started', flush=True); time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "started\n"
    time.sleep(1.5)
    child.kill()
    assert child.wait(timeout=30) == -signal.SIGKILL
    record = json.loads(path.read_text())
    assert record["launches"] == 3 and 101.0 <= record["wall_s"] <= 103.0


def test_a_finished_clock_records_its_whole_time(tmp_path: Path) -> None:
    path = tmp_path / reproduce.WALL
    with reproduce.WallClock(path, every=3600) as clock:
        time.sleep(0.2)
    assert json.loads(path.read_text()) == clock.total() and 0.2 <= clock.total()["wall_s"] < 2.0
    assert "launches" not in clock.total()


def test_a_scale_the_variant_lacks_is_refused_in_one_line(tmp_path: Path) -> None:
    assert "overnight" not in reproduce.OmegaConf.load(reproduce.SPECS / "rho_vae.yaml").scales
    done = run_script("rho_vae", tmp_path, "--scale", "overnight", "--dry-run")
    assert done.returncode == 2
    assert done.stderr == "error: --scale overnight: rho_vae has none; choose among smoke, cpu, gpu\n"
    assert not any(tmp_path.iterdir())


def test_the_costliest_arms_start_first(tmp_path: Path) -> None:
    """VLAE's arms cost ~5, 11 and 18 minutes per run at the cpu scale: with the AF prior's runs first and the
    unconditional PixelCNN's last, the run left alone at the end on one thread is a short one."""
    done = run_script("vlae", tmp_path, "--scale", "cpu", "--dry-run")
    assert done.returncode == 0, done.stderr
    arms = [c.split("/runs/fashion_mnist/")[1].split("/")[0] for c in done.stdout.splitlines()]
    assert arms == ["af_prior"] * 3 + ["gaussian_prior"] * 3 + ["pixelcnn"] * 3


def test_table_option_runs_only_the_tables_named(tmp_path: Path) -> None:
    done = run_script("soft_intro_vae", tmp_path, "--table", "toy2d", "--dry-run")
    assert done.returncode == 0, done.stderr
    commands = done.stdout.splitlines()
    assert len(commands) == 6 and all("/runs/toy2d/" in c for c in commands)  # 2 arms x 3 seeds, training only
    done = run_script("soft_intro_vae", tmp_path, "--table", "toy2", "--dry-run")
    assert done.returncode == 2 and done.stderr == "error: --table toy2: choose among fashion_mnist, toy2d\n"
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_sos_vae_smoke_adds_the_nll_curve_coherence_and_the_8_bit_bound(tmp_path: Path) -> None:
    done = run_script("sos_vae", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = check_table(tmp_path, "sos_vae")["tables"]["fashion_mnist"]
    assert table["nll_k"] == [1, 4] and table["n_test"] == 20 and table["dims"] == 784
    for row in table["rows"]:
        cells = row["metrics"]
        # the curve's point at the run's own k is its test NLL, not evaluated again; the other k are
        assert cells["nll_k4"]["values"] == cells["test/nll"]["values"]
        assert cells["nll_k1"]["values"] != cells["test/nll"]["values"]
    run = tmp_path / "runs" / "fashion_mnist" / "low_rank" / "seed0"
    assert (run / "nll_k1" / "metrics.json").is_file() and not (run / "nll_k4").exists()
    for row in table["rows"]:
        cells = row["metrics"]
        for nll, bpd in zip(cells["test/nll"]["values"], cells["bpd_8bit"]["values"], strict=True):
            assert bpd == pytest.approx((nll + 784 * math.log(256)) / (784 * math.log(2)), rel=1e-12)
        assert -1 <= cells["sample_autocorr"]["mean"] <= 1
    assert (tmp_path / "grids" / "fashion_mnist" / "low_rank" / "seed0_samples.png").is_file()


def test_the_kl_is_placed_against_the_free_bits_floor_by_its_interval() -> None:
    def row(arm: str, values: list[float]) -> dict:
        interval = t_interval(values)
        cell = {"values": values, "mean": interval.mean, "half_width": interval.half_width}
        return {"arm": arm, "metrics": {"test/kl": cell}}

    rows = [row("over", [8.3, 8.4, 8.5]), row("straddles", [8.18, 7.97, 8.01]), row("under", [7.0, 7.1, 7.2])]
    assert reproduce.kl_against_floor(rows, 7.84) == (
        "Test KL against the free-bits floor of 7.84 nats (95% interval; seeds above it): over 8.40 ± 0.25, above it "
        "(3 of 3); straddles 8.05 ± 0.28, the interval holds it (3 of 3); under 7.10 ± 0.25, below it (0 of 3)."
    )


@pytest.mark.slow
def test_vlae_smoke_orders_arms_against_the_paper(tmp_path: Path) -> None:
    done = run_script("vlae", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = check_table(tmp_path, "vlae")["tables"]["fashion_mnist"]
    assert [row["metrics"]["test/nll"]["paper"] for row in table["rows"]] == [87.55, 79.48, 78.94]
    markdown = (tmp_path / "results.md").read_text()
    assert "the paper's pixelcnn > gaussian_prior > af_prior" in markdown
    assert "free-bits floor of 7.84 nats (95% interval; seeds above it): pixelcnn" in markdown


def test_the_fid_floor_is_computed_once_per_n(tmp_path: Path, monkeypatch) -> None:
    computed: list[int] = []

    def floor(run: Path, n: int) -> dict:
        computed.append(n)
        return {"fid": 1.0 + n, "n": n, "n_reference": n}

    monkeypatch.setattr(reproduce, "fid_floor", floor)
    path = tmp_path / "fid_floor_fmnist.json"
    first = reproduce.cached_fid_floor(path, tmp_path, 20)
    assert reproduce.cached_fid_floor(path, tmp_path, 20) == first == json.loads(path.read_text())
    assert reproduce.cached_fid_floor(path, tmp_path, 30)["fid"] == 31.0 and computed == [20, 30]


@pytest.mark.slow
def test_soft_intro_smoke_has_fid_at_n_beside_the_real_floor(tmp_path: Path) -> None:
    done = run_script("soft_intro_vae", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = check_table(tmp_path, "soft_intro_vae")
    floor = result["tables"]["fashion_mnist"]["fid_floor"]
    assert floor["n"] == floor["n_reference"] == 20 and floor["fid"] > 0
    assert set(result["tables"]) == {"fashion_mnist", "toy2d"}
