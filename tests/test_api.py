"""The Python API: compose and train with no Hydra runtime, checkpoints that carry their config, ``load``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FAST
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from vae_experiments import api, run_config
from vae_experiments.errors import ConfigError
from vae_experiments.evaluate import evaluate
from vae_experiments.metrics.elbo import mean_elbo
from vae_experiments.metrics.nll import importance_sampled_log_likelihood
from vae_experiments.module import VAEModule
from vae_experiments.train import CONFIG_DIR, build, build_trainer

README = Path(CONFIG_DIR).parent / "README.md"
RUN_FOLDER = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}")
# after the README's eval.nll_samples=5000; the other eval settings stay the run's (FAST's), as evaluate's default
CHEAP_EVAL = ("eval.nll_samples=8",)


@pytest.fixture(autouse=True)
def no_hydra_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Hydra application around (other tests' fixtures set one), and ``outputs/`` inside ``tmp_path``."""
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    GlobalHydra.instance().clear()
    monkeypatch.chdir(tmp_path)


def readme_python_example() -> str:
    """The code block of README.md's "Python API" section."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1
    return blocks[0]


def test_the_readme_example_trains_without_hydra_runtime_and_loads_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The README's code as written, made tiny by overrides appended to its own (the later override wins)."""
    config, evaluate_checkpoint = api.config, api.TrainedVAE.evaluate
    monkeypatch.setattr(api, "config", lambda *o, **kw: config(*o, *FAST, **kw))
    monkeypatch.setattr(api.TrainedVAE, "evaluate", lambda self, *o, **kw: evaluate_checkpoint(self, *o, *CHEAP_EVAL))
    scope: dict[str, Any] = {}
    exec(compile(readme_python_example(), str(README), "exec"), scope)

    assert not HydraConfig.initialized()
    cfg, metrics, test = scope["cfg"], scope["metrics"], scope["test"]
    assert "hydra" not in cfg
    run = Path(cfg.paths.output_dir)
    assert run.parent == tmp_path / "outputs" / "train" and RUN_FOLDER.fullmatch(run.name)
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / ".hydra").exists()
    assert scope["vae"].checkpoint == run / "checkpoints" / "last.ckpt"
    assert scope["x"].shape == (16, 1, 8, 8) and set(scope["x"].unique().tolist()) <= {0.0, 1.0}
    assert scope["q"].mean.shape == (16, 8) and scope["px"].mean.shape == (16, 1, 8, 8)
    assert scope["elbo"].shape == scope["nll"].shape == (16,)
    assert bool((scope["nll"] <= -scope["elbo"] + 1.0).all())  # the importance-sampled bound is the tighter one
    # vae-eval on the checkpoint, with the run's eval settings: the run's own test metrics, exactly
    assert test["test/nll_samples"] == 8
    tested = sorted(k for k in metrics if k.startswith("test/"))
    assert {k: test[k] for k in tested} == {k: metrics[k] for k in tested}
    evaluated = list((tmp_path / "outputs" / "eval").glob("*/metrics.json"))
    assert len(evaluated) == 1 and RUN_FOLDER.fullmatch(evaluated[0].parent.name)


def test_a_copied_checkpoint_loads_the_trained_module_bit_for_bit(tmp_path: Path) -> None:
    """Trained in memory; ``load`` from a copy of its last checkpoint, with no run folder around: the same posterior,
    likelihood, ELBO, NLL and samples (the same draws), on the CPU in eval mode."""
    cfg = api.config(*FAST, "latent_dim=4", "posterior=iaf", output_dir=tmp_path / "run")
    datamodule, module = build(cfg)
    build_trainer(cfg).fit(module, datamodule=datamodule)
    module.eval()
    copy = tmp_path / "elsewhere" / "model.ckpt"
    copy.parent.mkdir()
    shutil.copy(tmp_path / "run" / "checkpoints" / "last.ckpt", copy)
    stored = torch.load(copy, weights_only=True)[run_config.CHECKPOINT_KEY]
    assert stored == run_config.portable(cfg) and stored["latent_dim"] == 4
    assert stored["paths"]["data_dir"].startswith("${oc.env:VAE_DATA_DIR,")  # resolved where it is loaded

    vae = api.load(copy)
    assert not vae.module.training and vae.device == torch.device("cpu") and vae.config.posterior == cfg.posterior
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)).bernoulli()
    torch.manual_seed(1)
    q_trained = module.model.encode(x)
    z = q_trained.rsample()
    torch.manual_seed(1)
    q_loaded = vae.encode(x)
    assert torch.equal(q_loaded.rsample(), z)
    assert torch.equal(vae.decode(z).mean, module.model.decode(z).mean)
    for estimate, reference in (
        (lambda: vae.elbo(x, samples=8), lambda: mean_elbo(module.model, x, 8)[0]),
        (lambda: vae.nll(x, samples=8), lambda: -importance_sampled_log_likelihood(module.model, x, 8)),
        (lambda: vae.sample(3), lambda: module.model.sample(3)),
    ):
        torch.manual_seed(2)
        expected = reference()
        torch.manual_seed(2)
        assert torch.equal(estimate(), expected)


def test_config_fills_in_the_runtime_and_honours_the_output_folder(tmp_path: Path) -> None:
    a, b = api.config(), api.config()
    assert a.paths.output_dir != b.paths.output_dir  # a new folder per call, even in the same second
    assert Path(a.paths.output_dir).is_absolute() and "hydra" not in a
    assert api.config(output_dir=tmp_path / "x").paths.output_dir == str(tmp_path / "x")
    assert api.config("paths.output_dir=elsewhere").paths.output_dir == "elsewhere"
    wandb = api.config("logger=wandb", "latent_dim=3")
    assert wandb.logger.wandb.name == "latent_dim=3,logger=wandb"  # ${hydra:job.override_dirname}, as the CLI names it
    assert OmegaConf.to_container(wandb.paths)["data_dir"].startswith("${oc.env:VAE_DATA_DIR,")  # kept for later
    assert wandb.callbacks.model_checkpoint.dirpath == f"{wandb.paths.output_dir}/checkpoints"
    assert not HydraConfig.initialized()


def old_checkpoint(tmp_path: Path, *overrides: str) -> tuple[Path, VAEModule, Any]:
    """A checkpoint as written before checkpoints carried their config: weights only, in ``RUN/checkpoints/``."""
    cfg = api.config(*overrides, output_dir=tmp_path / "run")
    module = build(cfg)[1]
    path = tmp_path / "run" / "checkpoints" / "old.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict()}, path)
    return path, module, cfg


def test_an_older_checkpoint_is_one_clear_error_outside_its_run_folder(tmp_path: Path) -> None:
    path = old_checkpoint(tmp_path)[0]
    message = f"{path} carries no run config (it predates checkpoints that do) and no .hydra/config.yaml is above it"
    with pytest.raises(ConfigError, match=re.escape(message)):
        api.load(path)
    eval_cfg = OmegaConf.create({"ckpt_path": str(path), "eval": {}, "paths": {"output_dir": str(tmp_path / "e")}})
    with pytest.raises(ConfigError, match=re.escape(message)):
        evaluate(eval_cfg)


def test_an_older_checkpoint_loads_with_its_run_folders_config(tmp_path: Path) -> None:
    path, module, cfg = old_checkpoint(tmp_path, "latent_dim=3")
    (tmp_path / "run" / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / "run" / ".hydra" / "config.yaml")
    vae = api.load(path)
    assert vae.model.latent_dim == 3
    loaded, built = vae.module.state_dict(), module.state_dict()
    assert loaded.keys() == built.keys() and all(torch.equal(loaded[k], built[k]) for k in built)


def test_load_names_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is neither a checkpoint nor a run folder with checkpoints/last\.ckpt"):
        api.load(tmp_path)
    with pytest.raises(TypeError, match=r"use vae_experiments\.api\.load\(path\)"):
        VAEModule.load_from_checkpoint(tmp_path / "any.ckpt")
