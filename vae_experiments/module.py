"""The LightningModule: optimisers, logging and evaluation; the training step is the objective's."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from vae_experiments.capture import CapturedStep, make_capturable
from vae_experiments.contracts import optional
from vae_experiments.metrics.diagnostics import PosteriorDiagnostics
from vae_experiments.metrics.elbo import mean_elbo
from vae_experiments.metrics.nll import bits_per_dim, importance_sampled_log_likelihood
from vae_experiments.metrics.running import RunningMeans
from vae_experiments.model import VAE, kl_per_dim, posterior_mean
from vae_experiments.objectives.base import (
    Objective,
    OptimizerFactory,
    StepContext,
    StepOutput,
    backward,
    run_iteration,
)
from vae_experiments.run_config import CHECKPOINT_KEY

TEST_KEYS = ("elbo", "nll", "recon", "kl", "loss")


class VAEModule(L.LightningModule):
    """Holds a ``VAE`` and an ``Objective``; logs the true ELBO for every objective.

    Train: the objective's step sees a ``StepContext``; the module logs its ``StepOutput.logs``: every
    ``trainer.log_every_n_steps`` training batches (from the first) as ``train/<name>_step``, and at the end of the
    epoch the batch-weighted means as ``train/<name>`` (synced across ranks; ``loss`` and ``elbo`` on the progress
    bar). In between nothing waits for the device: the means accumulate where they are computed, and a non-finite
    loss on a GPU is caught at the next logging step, at the end of the epoch, or before any checkpoint is written
    (on the CPU, where the check costs nothing, at once); until then a fused optimiser skips the non-finite updates
    on the device (``guard_finite``). With ``capture`` (a ``CapturedStep``, on a GPU) the whole iteration, optimiser
    updates included, runs as a replayed CUDA graph; Lightning's optimiser-step hooks for callbacks do not run then.

    Test: ``test/elbo``, ``test/recon``, ``test/kl`` (nats per example, the mean over ``elbo_samples`` posterior
    draws per example), ``test/nll`` (importance-sampled with ``nll_samples``), ``test/bpd`` (when the likelihood is
    a mass over the data's levels), ``test/active_units`` and the KL per latent dimension; ``test/loss``, the
    objective's training loss on the test set (objectives with a ``loss``); ``test/valid_bound``, false when a part
    declares ``valid_bound = False`` (a reference-faithful mode whose ELBO / NLL are not bounds). All are reduced with
    torchmetrics, so they are exact across DDP ranks.
    """

    def __init__(
        self,
        model: VAE,
        objective: Objective,
        optimizer: OptimizerFactory,
        data_levels: int | None = None,
        nll_samples: int = 1000,
        nll_max_rows: int = 4096,
        elbo_samples: int = 1,
    ) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.optimizer_factory = optimizer
        self.automatic_optimization = objective.automatic_optimization
        self.nll_samples = nll_samples
        self.nll_max_rows = nll_max_rows
        self.elbo_samples = elbo_samples
        self.report_bpd = model.likelihood.levels is not None and model.likelihood.levels == data_levels
        self.dims = math.prod(model.data_shape)
        self.test_means = nn.ModuleDict({k: MeanMetric() for k in TEST_KEYS})
        self.diagnostics = PosteriorDiagnostics(model.latent_dim)
        self.test_extras: dict[str, Any] = {}
        self.test_batches_done = 0  # the test batches a continued test phase skips (``ResumableTestLoop``)
        # how the run computes what it reports (kl_estimator, decoder/receptive_field); set by train.build
        self.run_info: dict[str, str] = {}
        # the run config every checkpoint carries (``run_config.portable``); set by train.build
        self.run_config: dict[str, Any] | None = None
        self.train_means = RunningMeans()
        self._step_output: StepOutput | None = None
        # whether reading a value on the host is free: None decides by the device (free on the CPU, a wait for the
        # queued work on a GPU); the tests set False to run the GPU path on the CPU
        self.host_reads_free: bool | None = None
        self._all_finite: Tensor | None = None
        self.channels_last = False
        self.capture: CapturedStep | None = None
        self._optimizer_steps = 0
        self._steps_per_variant: dict[Hashable, int] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name twice around every hook of every callback (~50 times a step), and
        # nn.Module.__setattr__ scans its parameter, buffer and module dicts each time, a measurable share of a small
        # MLP's step (BENCHMARKS.md, digits). A string is never a parameter, so set it directly.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def use_channels_last(self) -> None:
        """Hold the model's 4-D weights, and the images it encodes, in channels-last (NHWC) memory layout."""
        self.model.to(memory_format=torch.channels_last)
        self.model.channels_last = True
        self.channels_last = True

    def use_capture(self, capture: CapturedStep) -> None:
        """Run each training iteration through ``capture`` (call before ``trainer.fit``). The module then steps the
        optimisers itself (manual optimisation), inside the recorded iteration, with device-side optimiser state."""
        self.capture = capture
        self.automatic_optimization = False

    # --- training -----------------------------------------------------------------------------------------------

    def guard_finite(self, loss: Tensor, *optimizers: Any, detail: Callable[[], str] | None = None) -> None:
        """Stop on a non-finite training loss without losing work; call before ``optimizers`` apply ``loss``.

        Where reading a value on the host is free (on the CPU; ``host_reads_free`` overrides the device's answer, so
        the tests can run the GPU path) a non-finite loss raises at once, before the update; ``detail()`` adds to the
        message. Elsewhere the verdict stays on the device: it accumulates (in place, so a
        replayed graph updates it too) until the next logging step, the end of the epoch or a checkpoint, which
        raise, and meanwhile each of ``optimizers`` that can skip a step on the device (torch's fused Adam, AdamW,
        SGD: the ``found_inf`` flag of AMP's GradScaler) skips this update and every later one. Others apply them;
        the last checkpoint keeps the last good weights either way.
        """
        finite = torch.isfinite(loss.detach())
        reads_free = self.device.type == "cpu" if self.host_reads_free is None else self.host_reads_free
        if reads_free:
            if not bool(finite):
                raise FloatingPointError(self._non_finite_message(detail() if detail is not None else ""))
            return
        if self._all_finite is None:
            self._all_finite = torch.ones((), dtype=torch.bool, device=loss.device)
        self._all_finite.logical_and_(finite)
        skip = (~self._all_finite).float()
        for optimizer in optimizers:
            optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning's wrapper: the flag goes inside
            if getattr(optimizer, "_step_supports_amp_scaling", False):
                optimizer.found_inf = skip

    def _raise_if_not_finite(self) -> None:
        if self._all_finite is not None and not bool(self._all_finite):
            self._all_finite.fill_(True)
            raise FloatingPointError(self._non_finite_message(""))

    def _non_finite_message(self, detail: str) -> str:
        """Three lines: what happened and at which step, the checkpoint that holds the last good state (if any), and
        the objective's and the likelihood's advice."""
        advice = [self.objective.non_finite_advice, optional(self.model.likelihood, "non_finite_advice")]
        saved = self._last_good_checkpoint()
        kept = (
            f"the last good state is in {saved} (written before the bad step)"
            if saved
            else "no checkpoint holds a good state yet (the first is written when the first epoch ends)"
        )
        return (
            f"non-finite training loss by step {self.global_step}{detail}; the run stopped\n"
            f"{kept}\n"
            f"fix: {'; '.join(a for a in advice if a)}"
        )

    def _last_good_checkpoint(self) -> str | None:
        """The newest checkpoint file of this fit: ``last.ckpt`` (``LastCheckpoint.path``), else the best one."""
        if self._trainer is None:
            return None
        callbacks = self.trainer.checkpoint_callbacks
        paths = [getattr(c, "path", None) for c in callbacks] + [getattr(c, "best_model_path", None) for c in callbacks]
        return next((str(path) for path in paths if path and Path(path).is_file()), None)

    def _reduce_mean(self, t: Tensor) -> Tensor:
        trainer = self._trainer
        return trainer.strategy.reduce(t, reduce_op="mean") if trainer is not None else t

    def step_context(self, optimizers: Any = (), backward: Callable[..., None] = backward) -> StepContext:
        return StepContext(
            model=self.model,
            optimizers=optimizers,
            global_step=self.global_step,
            epoch=self.current_epoch,
            backward=backward,
            guard_finite=self.guard_finite,
            reduce_mean=self._reduce_mean,
        )

    def configure_optimizers(self) -> Any:
        optimizers = self.objective.configure_optimizers(self.model, self.optimizer_factory)
        if self.capture is not None:
            for optimizer in optimizers if isinstance(optimizers, list | tuple) else [optimizers]:
                make_capturable(optimizer)
                optimizer.register_step_post_hook(self._count_optimizer_step)
        return optimizers

    def _count_optimizer_step(self, *args: Any) -> None:
        self._optimizer_steps += 1

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.objective.set_step(self.global_step)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor | None:
        if self.capture is not None:
            self._captured_step(batch)
            return None
        if self.automatic_optimization:
            out = self.objective.training_step(self.step_context(), batch)
            if out.loss is not None:
                self.guard_finite(out.loss, *self.trainer.optimizers)
        else:
            optimizers = self.optimizers()
            optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
            out = self.objective.training_step(self.step_context(optimizers, self.manual_backward), batch)
        self._step_output = out
        self._log_train(out.logs, batch.shape[0])
        return out.loss

    def _captured_step(self, batch: Tensor) -> None:
        """The whole iteration through ``capture``; Lightning's step count advances by the updates it made."""
        assert self.capture is not None
        variant = (self.objective.step_variant(self.current_epoch), tuple(batch.shape), batch.dtype)
        self._optimizer_steps = 0
        logs, _ = self.capture(variant, self._whole_iteration, batch)
        steps = self._optimizer_steps or self._steps_per_variant[variant]  # a replay runs no Python hook
        self._steps_per_variant[variant] = steps
        optimizer = self.trainer.strategy._lightning_optimizers[0]
        for _ in range(steps):  # what LightningOptimizer.step does around each update, for Lightning's progress
            optimizer._on_before_step()
            optimizer._on_after_step()
        self._log_train(logs, batch.shape[0])

    def _whole_iteration(self, x: Tensor) -> dict[str, Tensor]:
        ctx = self.step_context(self.trainer.optimizers)
        return run_iteration(self.objective, ctx, x).logs

    def drop_gradients(self) -> None:
        """Set every gradient to None (before a graph is recorded, so backward allocates them inside it)."""
        for optimizer in self.trainer.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        for optimizer in self.trainer.optimizers:
            optimizer.__dict__.pop("found_inf", None)  # set by guard_finite for this batch's steps only
        if self._step_output is not None:  # the captured iteration ran after_update itself
            self.objective.after_update(self.step_context(), self._step_output)
            self._step_output = None

    def _log_train(self, logs: dict[str, Tensor], batch_size: int) -> None:
        # Lightning's self.log costs more per call than a small model's whole step (BENCHMARKS.md)
        logs = {**self.objective.scheduled_values(), **logs}  # every schedule, whether the objective logs it or not
        self.train_means.update(logs, batch_size, self.device)
        if self._trainer is None:
            return
        # the batches of the whole fit before this one (Lightning's own count, restored on resume): the logging
        # cadence of a resumed run is the uninterrupted run's
        if self.trainer.fit_loop.epoch_loop._batches_that_stepped % self.trainer.log_every_n_steps == 0:
            self._raise_if_not_finite()
            values = {f"train/{k}_step": v for k, v in self.train_means.last_values().items()}
            for logger in self.loggers:
                logger.log_metrics({**values, "epoch": self.current_epoch}, step=self.global_step)

    def on_fit_start(self) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(self.run_info)

    def on_train_epoch_end(self) -> None:
        self._raise_if_not_finite()
        for key, value in self.train_means.means().items():
            self.log(
                f"train/{key}", value, on_step=False, on_epoch=True, sync_dist=True, prog_bar=key in ("loss", "elbo")
            )
        self.train_means.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._raise_if_not_finite()
        if self.run_config is not None:
            checkpoint[CHECKPOINT_KEY] = self.run_config

    @classmethod
    def load_from_checkpoint(cls, *args: Any, **kwargs: Any) -> VAEModule:
        """Not Lightning's: its loader calls the constructor with saved arguments, and this module's are built parts
        (a ``VAE``, an ``Objective``), not hyper-parameters. The checkpoint carries the run config instead."""
        raise TypeError(
            "a VAEModule is rebuilt from the run config its checkpoint carries: use vae_experiments.api.load(path)"
        )

    # --- evaluation ---------------------------------------------------------------------------------------------

    def _log_eval(self, stage: str, logs: dict[str, Tensor], batch_size: int) -> None:
        """Epoch means of detached scalars as ``stage/name``, weighted by batch size and synced across ranks."""
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

    def on_validation_epoch_start(self) -> None:
        self.objective.set_step(self.global_step)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        t = self.model.terms(batch, 1)
        recon = t.log_px_z.mean(0)
        logs = {"elbo": (recon - t.kl).mean(), "recon": -recon.mean(), "kl": t.kl.mean()}
        if self.objective.automatic_optimization:
            # the objective's weights (a scheduled beta, ...) at the same optimiser step as in training, logged too
            loss, extra = self.objective.loss(self.model, batch)
            logs = {**extra, **logs, "loss": loss.detach()}
        self._log_eval("val", logs, batch.shape[0])

    def on_test_epoch_start(self) -> None:
        self.objective.set_step(self.global_step)

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        if batch_idx < self.test_batches_done:
            return
        q = self.model.encode(batch)
        elbo, recon, kl = mean_elbo(self.model, batch, self.elbo_samples, self.nll_max_rows, q=q)
        log_px = importance_sampled_log_likelihood(self.model, batch, self.nll_samples, self.nll_max_rows, q=q)
        values = {"elbo": elbo, "recon": -recon, "kl": kl, "nll": -log_px}
        for key, value in values.items():
            self.test_means[key].update(value)
        if self.objective.automatic_optimization:
            loss = self.objective.loss(self.model, batch)[0]
            self.test_means["loss"].update(loss, weight=batch.shape[0])
        self.diagnostics.update(posterior_mean(q), kl_per_dim(q, self.model.prior))

    def on_test_epoch_end(self) -> None:
        logs = {f"test/{k}": m.compute() for k, m in self.test_means.items() if m.update_called}
        if self.report_bpd:
            logs["test/bpd"] = bits_per_dim(logs["test/nll"], self.dims)
        diag = self.diagnostics.compute()
        logs["test/active_units"] = diag["active_units"].float()
        self.log_dict(logs, sync_dist=True)  # already reduced by torchmetrics: the mean of equal values
        valid = all(optional(part, "valid_bound") for part in (*self.model.children(), self.objective))
        self.test_extras = {"test/nll_samples": self.nll_samples, "test/valid_bound": valid}
        if "kl_per_dim" in diag:
            self.test_extras["test/kl_per_dim"] = [round(v, 6) for v in diag["kl_per_dim"].tolist()]
        self.test_extras["test/activity_per_dim"] = [round(v, 6) for v in diag["activity"].tolist()]
        for m in (*self.test_means.values(), self.diagnostics):
            m.reset()
