"""The LightningModule: optimisers, logging and evaluation; the training step is the objective's."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from vae_experiments.metrics.diagnostics import PosteriorDiagnostics
from vae_experiments.metrics.nll import bits_per_dim, importance_sampled_log_likelihood
from vae_experiments.metrics.running import RunningMeans
from vae_experiments.model import VAE, kl_per_dim, posterior_mean
from vae_experiments.objectives.base import Objective, OptimizerFactory

TEST_KEYS = ("elbo", "nll", "recon", "kl", "loss")


class VAEModule(L.LightningModule):
    """Holds a ``VAE`` and an ``Objective``; logs the true ELBO for every objective.

    Train: every ``trainer.log_every_n_steps`` training batches (from the first) the step's values go to the loggers
    as ``train/<name>_step``; at the end of the epoch the batch-weighted means are logged as ``train/<name>`` (synced
    across ranks; ``loss`` and ``elbo`` on the progress bar). In between nothing waits for the device: the means
    accumulate where they are computed, and a non-finite loss on a GPU is caught at the next logging step, at the end
    of the epoch, or before any checkpoint is written (on the CPU, where the check costs nothing, at once); until then a
    fused optimiser skips the non-finite updates on the device (``check_finite``).

    Test: ``test/elbo``, ``test/recon``, ``test/kl`` (nats per example), ``test/nll`` (importance-sampled with
    ``nll_samples``), ``test/bpd`` (when the likelihood is a mass over the data's levels), ``test/active_units`` and
    the KL per latent dimension; ``test/loss``, the objective's training loss on the test set (automatic-optimisation
    objectives); ``test/valid_bound``, false when a part declares ``valid_bound = False`` (a reference-faithful mode
    whose ELBO / NLL are not bounds). All are reduced with torchmetrics, so they are exact across DDP ranks.
    """

    def __init__(
        self,
        model: VAE,
        objective: Objective,
        optimizer: OptimizerFactory,
        data_levels: int | None = None,
        nll_samples: int = 1000,
        nll_max_rows: int = 4096,
    ) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.optimizer_factory = optimizer
        self.automatic_optimization = objective.automatic_optimization
        self.nll_samples = nll_samples
        self.nll_max_rows = nll_max_rows
        likelihood_levels = getattr(model.likelihood, "levels", None)
        self.report_bpd = likelihood_levels is not None and likelihood_levels == data_levels
        self.dims = math.prod(model.data_shape)
        self.test_means = nn.ModuleDict({k: MeanMetric() for k in TEST_KEYS})
        self.diagnostics = PosteriorDiagnostics(model.latent_dim)
        self.test_extras: dict[str, Any] = {}
        # how the run computes what it reports (kl_estimator, decoder/receptive_field); set by train.build
        self.run_info: dict[str, str] = {}
        self.train_means = RunningMeans()
        self._train_batches = 0
        self._finite: Tensor | None = None
        self.read_values_eagerly: bool | None = None
        self.channels_last = False

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name twice around every hook of every callback (~50 times a step here), and
        # nn.Module.__setattr__ scans its parameter, buffer and module dicts each time: ~0.5 ms a step, 15% of a
        # small MLP's step (BENCHMARKS.md, digits). A string is never a parameter, so set it directly.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def use_channels_last(self) -> None:
        """Hold the model's 4-D weights, and the images it encodes, in channels-last (NHWC) memory layout."""
        self.model.to(memory_format=torch.channels_last)
        self.model.channels_last = True
        self.channels_last = True

    def log_metrics(self, stage: str, logs: dict[str, Tensor], batch_size: int) -> None:
        """Log detached scalars as ``stage/name``; epoch means are weighted by batch size and synced across ranks."""
        if stage == "train":
            self._log_train(logs, batch_size)
            return
        for key, value in logs.items():
            self.log(
                f"{stage}/{key}",
                value,
                on_step=False,
                on_epoch=True,
                batch_size=batch_size,
                sync_dist=True,
                prog_bar=key in ("loss", "elbo"),
            )

    def on_fit_start(self) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(self.run_info)

    def _log_train(self, logs: dict[str, Tensor], batch_size: int) -> None:
        # Lightning's self.log costs ~1 ms per call per step, more than a small model's whole step (BENCHMARKS.md)
        self.train_means.update(logs, batch_size, self.device)
        every = self.trainer.log_every_n_steps if self._trainer is not None else 1
        if self._train_batches % every == 0:
            self._raise_if_not_finite()
            values = {f"train/{k}_step": v for k, v in self.train_means.last_values().items()}
            for logger in self.loggers:
                logger.log_metrics({**values, "epoch": self.current_epoch}, step=self.global_step)
        self._train_batches += 1

    def on_train_epoch_end(self) -> None:
        self._raise_if_not_finite()
        for key, value in self.train_means.means().items():
            self.log(
                f"train/{key}", value, on_step=False, on_epoch=True, sync_dist=True, prog_bar=key in ("loss", "elbo")
            )
        self.train_means.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._raise_if_not_finite()

    def reads_values_eagerly(self) -> bool:
        """Whether reading a tensor's value on the host is free here: on the CPU it is, on a GPU it waits for the
        queued work (``read_values_eagerly`` overrides the device's answer; the tests use it to run the GPU path)."""
        return self.device.type == "cpu" if self.read_values_eagerly is None else self.read_values_eagerly

    def check_finite(
        self, loss: Tensor, *optimizers: torch.optim.Optimizer, detail: Callable[[], str] | None = None
    ) -> None:
        """Stop on a non-finite training loss without losing work; call before ``optimizers`` apply ``loss``.

        Where reads are free (``reads_values_eagerly``) a non-finite loss raises at once, before the update;
        ``detail()`` adds to the message. Elsewhere the verdict stays on the device: it accumulates until the next
        logging step, the end of the epoch or a checkpoint, which raise, and meanwhile each of ``optimizers`` that can
        skip a step on the device (torch's fused Adam, AdamW, SGD: the ``found_inf`` flag of AMP's GradScaler) skips
        this update and every later one. Others apply them; the last checkpoint keeps the last good weights either way.
        """
        finite = torch.isfinite(loss.detach())
        if self.reads_values_eagerly():
            if not bool(finite):
                raise FloatingPointError(self._non_finite_message(detail() if detail is not None else ""))
            return
        self._finite = finite if self._finite is None else self._finite & finite
        skip = (~self._finite).float()
        for optimizer in optimizers:
            if getattr(optimizer, "_step_supports_amp_scaling", False):
                optimizer.found_inf = skip

    def _raise_if_not_finite(self) -> None:
        if self._finite is not None and not bool(self._finite):
            self._finite = None
            raise FloatingPointError(self._non_finite_message(""))

    def _non_finite_message(self, detail: str) -> str:
        return (
            f"non-finite training loss by step {self.global_step}{detail}; the last good checkpoint is kept "
            f"({self.objective.non_finite_advice})"
        )

    def configure_optimizers(self) -> Any:
        return self.objective.configure_optimizers(self.model, self.optimizer_factory)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor | None:
        out = self.objective.training_step(self, batch)
        if out is not None:
            self.check_finite(out, *self.trainer.optimizers)
        return out

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        for optimizer in self.trainer.optimizers:
            optimizer.__dict__.pop("found_inf", None)  # set by check_finite for this batch's steps only
        self.objective.on_train_batch_end(self)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        t = self.model.terms(batch, 1)
        recon = t.log_px_z.mean(0)
        kl = t.kl if t.analytic_kl else t.kl.mean(0)
        logs = {"elbo": (recon - kl).mean(), "recon": -recon.mean(), "kl": kl.mean()}
        if self.automatic_optimization:
            # the objective's weights (a scheduled beta, ...) at the same optimiser step as in training, logged too
            loss, extra = self.objective.loss(self.model, batch, self.global_step)
            logs = {**extra, **logs, "loss": loss.detach()}
        self.log_metrics("val", logs, batch.shape[0])

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        q = self.model.encode(batch)
        t = self.model.terms(batch, 1, q=q)
        recon = t.log_px_z.mean(0)
        kl = t.kl if t.analytic_kl else t.kl.mean(0)
        log_px = importance_sampled_log_likelihood(self.model, batch, self.nll_samples, self.nll_max_rows)
        values = {"elbo": recon - kl, "recon": -recon, "kl": kl, "nll": -log_px}
        for key, value in values.items():
            self.test_means[key].update(value)
        if self.automatic_optimization:
            loss = self.objective.loss(self.model, batch, self.global_step)[0]
            self.test_means["loss"].update(loss, weight=batch.shape[0])
        self.diagnostics.update(posterior_mean(q), kl_per_dim(q, self.model.prior))

    def on_test_epoch_end(self) -> None:
        logs = {f"test/{k}": m.compute() for k, m in self.test_means.items() if m.update_called}
        if self.report_bpd:
            logs["test/bpd"] = bits_per_dim(logs["test/nll"], self.dims)
        diag = self.diagnostics.compute()
        logs["test/active_units"] = diag["active_units"].float()
        self.log_dict(logs, sync_dist=True)  # already reduced by torchmetrics: the mean of equal values
        valid = all(getattr(part, "valid_bound", True) for part in (*self.model.children(), self.objective))
        self.test_extras = {"test/nll_samples": self.nll_samples, "test/valid_bound": valid}
        if "kl_per_dim" in diag:
            self.test_extras["test/kl_per_dim"] = [round(v, 6) for v in diag["kl_per_dim"].tolist()]
        self.test_extras["test/activity_per_dim"] = [round(v, 6) for v in diag["activity"].tolist()]
        for m in (*self.test_means.values(), self.diagnostics):
            m.reset()
