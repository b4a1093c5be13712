"""The Python API: compose a run's config, train it, and load the trained model from its checkpoint, with no
command line and no Hydra runtime.

    from vae_experiments.api import config, load, train

    cfg = config("latent_dim=8", "trainer.max_epochs=5")  # what `vae-train latent_dim=8 trainer.max_epochs=5` runs
    metrics = train(cfg)  # the final metrics, also in cfg.paths.output_dir/metrics.json
    vae = load(cfg.paths.output_dir)  # or any checkpoint file: it carries its run config

Like pythae's ``AutoModel.load_from_folder``, ``load`` needs nothing but the checkpoint (not the run's ``.hydra/``
folder, not the data set's files): every checkpoint of a run carries the run's config (``run_config``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write
from torch import Tensor
from torch.distributions import Distribution

from vae_experiments import resume, run_config, run_dirs
from vae_experiments.errors import ConfigError
from vae_experiments.evaluate import evaluate
from vae_experiments.metrics.elbo import mean_elbo
from vae_experiments.metrics.nll import importance_sampled_log_likelihood
from vae_experiments.model import VAE
from vae_experiments.module import VAEModule
from vae_experiments.train import CONFIG_DIR, build, train

__all__ = ["TrainedVAE", "config", "load", "train"]


def config(*overrides: str, output_dir: str | Path | None = None) -> DictConfig:
    """The config ``vae-train OVERRIDES`` would run, composed from the package's ``conf/`` with Hydra's compose API;
    ``train(config(...))`` runs it.

    ``paths.output_dir`` is ``output_dir`` when given, else a ``paths.output_dir=`` override, else the folder the
    command line would choose (``hydra.run.dir``: ``outputs/train/<date>_<time>_<uid>``, a new ``uid`` for every call),
    made absolute. What only Hydra's runtime supplies (``${hydra:...}`` values) is filled in here, and the ``hydra``
    node is left out: the config is complete without a runtime.
    """
    return _compose("train", overrides, output_dir)


def _compose(name: str, overrides: Sequence[str], output_dir: str | Path | None) -> DictConfig:
    """``conf/<name>.yaml`` with ``overrides``, its runtime values filled in as Hydra's ``run_job`` would."""
    run_dirs.draw_new_uid()
    global_hydra = GlobalHydra.instance()
    running = global_hydra.hydra  # an application of Hydra's calling this: its own compose state is kept
    global_hydra.clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, job_name=name, version_base="1.3"):
            cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
    finally:
        global_hydra.hydra = running
    runtime = HydraConfig.instance().cfg
    with read_write(cfg), open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = os.path.abspath(cfg.hydra.run.dir)
        HydraConfig.instance().set_config(cfg)
        try:
            run_config.pin_runtime_values(cfg)
        finally:
            HydraConfig.instance().cfg = runtime
        del cfg["hydra"]
    return cfg


def checkpoint_file(path: Path) -> Path:
    """``path`` itself when it is a file, else the run folder's last checkpoint (``checkpoints/last.ckpt``)."""
    if path.is_file():
        return path
    if (path / resume.LAST).is_file():
        return path / resume.LAST
    raise ConfigError(f"{path} is neither a checkpoint nor a run folder with {resume.LAST}: pass RUN or a .ckpt file")


def load(path: str | Path, *overrides: str, device: str | torch.device = "cpu") -> TrainedVAE:
    """The trained model of a checkpoint file, or of a run folder (its ``checkpoints/last.ckpt``), in eval mode on
    ``device``.

    The model is rebuilt from the run config the checkpoint carries (a checkpoint written before checkpoints carried
    one: its run folder's ``.hydra/config.yaml``), changed by dotlist ``overrides`` (``paths.data_dir=/data``, say,
    to evaluate on another machine), and given the checkpoint's weights. The data set's files are needed only by
    ``TrainedVAE.evaluate``.
    """
    ckpt = checkpoint_file(Path(path))
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = run_config.of_checkpoint(ckpt, checkpoint)
    with open_dict(cfg):
        cfg.merge_with_dotlist(list(overrides))
    datamodule, module = build(cfg, require_data=False)
    module.load_state_dict(checkpoint["state_dict"])
    module.to(device).eval()
    return TrainedVAE(module=module, datamodule=datamodule, config=cfg, checkpoint=ckpt, overrides=tuple(overrides))


@dataclass(frozen=True)
class TrainedVAE:
    """A trained model and the config it was built from. ``encode``, ``decode``, ``sample`` and ``reconstruct`` run
    without gradients (``model``, the ``VAE``, for those); inputs are moved to the model's device.

    ``elbo`` and ``nll`` estimate on a tensor, with the estimators of the test phase (``metrics.elbo``,
    ``metrics.nll``) and the run's ``eval`` settings unless told; they draw from torch's global generator, so
    ``torch.manual_seed`` makes them repeatable. ``evaluate`` is ``vae-eval`` on the checkpoint: the run's whole test
    phase on its test set.
    """

    module: VAEModule
    datamodule: L.LightningDataModule
    config: DictConfig
    checkpoint: Path
    overrides: tuple[str, ...] = ()

    @property
    def model(self) -> VAE:
        return self.module.model

    @property
    def device(self) -> torch.device:
        return self.module.device

    @torch.no_grad()
    def encode(self, x: Tensor) -> Distribution:
        """q(z|x) for a batch ``x`` of shape (B, *data_shape): a Distribution over (B, latent_dim)."""
        return self.model.encode(x.to(self.device))

    @torch.no_grad()
    def decode(self, z: Tensor, x: Tensor | None = None) -> Distribution:
        """p(x|z) for latents ``z`` of shape (B, latent_dim); an autoregressive decoder also needs ``x``."""
        return self.model.decode(z.to(self.device), None if x is None else x.to(self.device))

    def sample(self, n: int, mean: bool = True) -> Tensor:
        """``n`` examples: z ~ p(z), then the mean of p(x|z) (``mean``) or a draw from it."""
        return self.model.sample(n, mean)

    def reconstruct(self, x: Tensor, mean: bool = True) -> Tensor:
        """p(x|z) at the posterior mean of z, its mean (``mean``) or a draw."""
        return self.model.reconstruct(x.to(self.device), mean)

    def elbo(self, x: Tensor, samples: int | None = None) -> Tensor:
        """ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)) per example (B,), in nats: the mean over ``samples``
        posterior draws (default: the run's ``eval.elbo_samples``), the KL in closed form where there is one."""
        k = samples or self.config.eval.elbo_samples
        return mean_elbo(self.model, x.to(self.device), k, self.config.eval.nll_max_rows)[0]

    def nll(self, x: Tensor, samples: int | None = None) -> Tensor:
        """-log p(x) per example (B,), in nats, importance-sampled with ``samples`` draws from q(z|x) (default: the
        run's ``eval.nll_samples``; Burda et al., 2016): an upper bound on the NLL in expectation."""
        k = samples or self.config.eval.nll_samples
        return -importance_sampled_log_likelihood(self.model, x.to(self.device), k, self.config.eval.nll_max_rows)

    def evaluate(self, *overrides: str, output_dir: str | Path | None = None) -> dict[str, Any]:
        """``vae-eval`` on this checkpoint: the test phase of ``vae-train`` on the run's test set, seeded with the run's
        seed, with the run's own ``eval`` settings unless ``overrides`` (``vae-eval``'s: ``eval.nll_samples=5000``)
        change them; unchanged, it gives the run's ``test/*`` values exactly. Writes ``metrics.json`` to
        ``output_dir`` (default: a new ``outputs/eval/<date>_<time>_<uid>``) and returns the metrics."""
        cfg = _compose("eval", overrides, output_dir)
        given = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
        with open_dict(cfg):
            for key in cfg.eval:
                if f"eval.{key}" not in given:
                    cfg.eval[key] = self.config.eval[key]
            cfg.ckpt_path = str(self.checkpoint)
            cfg.overrides = [*self.overrides, *cfg.overrides]
        return evaluate(cfg)
