"""A test phase that continues where a stopped one left off, so that a run stopped while testing (an NLL at k = 1,000
can test for hours) repeats at most the test batch that was running, and a stopped FID (10,000 Inception passes take
half an hour on a CPU) at most its last minute."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from vae_experiments.atomic import write_atomically
from vae_experiments.callbacks.rng_state import RNGState
from vae_experiments.metrics.fid import RunningStats

TEST_PROGRESS = "test_progress.pt"
FID_PROGRESS = "fid_progress.pt"


class ResumableTestLoop(L.Callback):
    """After every test batch, ``folder / TEST_PROGRESS`` (one file per rank under DDP) gets, atomically, the number of
    batches done, the state of every torchmetrics ``Metric`` of the module (the test loop's running means) and the
    random generators' states, under a key of all that decides the test's numbers: the weights, ``settings`` (the
    eval settings and the seed; the caller leaves out ``nll_max_rows``, which only chunks the same draws), the data's
    options and the number of test batches.

    A test phase that finds a file of its own key restores it, has the module skip the batches done
    (``VAEModule.test_batches_done``) and restores the random state before the first batch it computes: its metrics
    are the uninterrupted test's, bit for bit (the test data are fixed and their loader draws nothing between
    batches). A file of another key (other weights, another k) is replaced, after a line that names what differs.
    The caller removes the file once the results are written (``report.write_final_metrics``): a stop before that, in
    the extra evaluations after the test loop say, leaves it, and the next attempt skips the whole test loop.

    By hand because Lightning resumes only its fit loop mid-epoch: its test loop starts over, and torchmetrics keeps
    no count of updates in a metric's state.
    """

    def __init__(self, folder: Path, settings: dict[str, Any]) -> None:
        self.folder = folder
        self.settings = settings
        self.key: tuple[str, str] = ("", "")
        self.done = 0
        self._rng: dict[str, Any] | None = None

    def path(self, trainer: L.Trainer) -> Path:
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        return self.folder / f"{TEST_PROGRESS}{suffix}"

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.key = progress_key(trainer, pl_module, self.settings)
        self.done, self._rng = 0, None
        path = self.path(trainer)
        saved = torch.load(path, weights_only=True) if path.is_file() else None
        if saved is None:
            return
        if (saved.get("weights"), saved.get("context")) != self.key:
            if trainer.is_global_zero:
                print(
                    f"test phase: {path} is the progress of {_what_differs(saved, *self.key)} (batches done: "
                    f"{saved['batches']}); starting over (the file is replaced after the first batch)",
                    file=sys.stderr,
                )
            return
        for name, metric in metrics(pl_module).items():
            load_metric_state(metric, saved["metrics"][name])
        self.done, self._rng = saved["batches"], saved["rng"]
        pl_module.test_batches_done = self.done
        if trainer.is_global_zero:
            batches = sum(trainer.num_test_batches)
            print(f"test phase: continuing after {self.done} of {batches} batches, from {path}", file=sys.stderr)

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._rng is not None and batch_idx == self.done:
            RNGState().load_state_dict(self._rng)
            self._rng = None

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx < self.done:
            return
        state = {
            "weights": self.key[0],
            "context": self.key[1],
            "batches": batch_idx + 1,
            "metrics": {name: metric_state(m) for name, m in metrics(pl_module).items()},
            "rng": RNGState().state_dict(),
        }
        write_atomically(self.path(trainer), lambda f: torch.save(state, f))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.test_batches_done = 0


def metrics(module: L.LightningModule) -> dict[str, Metric]:
    return {name: m for name, m in module.named_modules() if isinstance(m, Metric)}


def metric_state(metric: Metric) -> dict[str, Any]:
    return {"state": {k: _to_cpu(v) for k, v in metric.metric_state.items()}, "updates": metric.update_count}


def load_metric_state(metric: Metric, saved: dict[str, Any]) -> None:
    device = metric.device
    for name, value in saved["state"].items():
        setattr(metric, name, [v.to(device) for v in value] if isinstance(value, list) else value.to(device))
    metric._update_count = saved["updates"]  # no public setter; ``update_called`` reads it
    metric._computed = None


def progress_key(trainer: L.Trainer, module: L.LightningModule, settings: dict[str, Any]) -> tuple[str, str]:
    """A digest of the weights, and the JSON of ``settings``, the data's options and the test batches per loader."""
    data = dict(getattr(trainer.datamodule, "hparams", {}))
    context = {**settings, "data": data, "test_batches": list(trainer.num_test_batches)}
    return weights_digest(module), json.dumps(context, sort_keys=True, default=str)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of every tensor of the module's state (names and bytes as stored)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FIDProgress:
    """A stopped FID computation's place (``metrics.fid.Progress``): ``path`` gets, atomically, each feature set's
    running statistics (count, mean, centred sum of squares) and the random generators' state, under ``weights`` (a
    digest) and ``context`` (the settings' JSON), when a set is finished and otherwise at most every ``every_s``
    seconds: 2,048 features make a 34 MB file, too much to write after every batch. A file of another key is
    replaced, after a line that names what differs. The caller removes the file once the results are written.

    By hand because torchmetrics' FID, whose sums are metric states, would still leave the sampler's random state
    and the batches done to be saved, and it has no public way to restore a reference set's statistics."""

    every_s = 60.0

    def __init__(self, path: Path, weights: str, context: str) -> None:
        self.path, self.weights, self.context = path, weights, context
        self._sets: dict[str, RunningStats] = {}
        self._finished: set[str] = set()
        self._saved: dict[str, Any] | None = None
        self._saved_at = time.monotonic()

    def restore(self, name: str, running: RunningStats) -> int:
        self._sets[name] = running
        entry = self._read()["sets"].get(name)
        if entry is None or entry["n"] == 0:
            return 0
        running.n = entry["n"]
        running.mean.copy_(entry["mean"])
        running.m2.copy_(entry["m2"])
        if entry["finished"]:
            self._finished.add(name)
        else:  # the set that was running when the file was written: its random state is the file's
            RNGState().load_state_dict(self._read()["rng"])
        print(f"FID: continuing the {name} images after {running.n}, from {self.path}", file=sys.stderr)
        return running.n

    def update(self, name: str, running: RunningStats, finished: bool) -> None:
        self._sets[name] = running
        if finished:
            self._finished.add(name)
        if finished or time.monotonic() - self._saved_at >= self.every_s:
            sets = {
                key: {"n": r.n, "mean": r.mean.cpu(), "m2": r.m2.cpu(), "finished": key in self._finished}
                for key, r in self._sets.items()
            }
            state = {"weights": self.weights, "context": self.context, "sets": sets, "rng": RNGState().state_dict()}
            write_atomically(self.path, lambda f: torch.save(state, f))
            self._saved_at = time.monotonic()

    def _read(self) -> dict[str, Any]:
        if self._saved is None:
            saved = torch.load(self.path, weights_only=True) if self.path.is_file() else None
            self._saved = {"sets": {}}
            if saved is not None and (saved.get("weights"), saved.get("context")) == (self.weights, self.context):
                self._saved = saved
            elif saved is not None:
                what = _what_differs(saved, self.weights, self.context)
                print(f"FID: {self.path} is the progress of {what}; starting over", file=sys.stderr)
        return self._saved


def _what_differs(saved: dict[str, Any], weights: str, context: str) -> str:
    """``other weights``, or the settings that differ (``eval.nll_samples 8 -> 16``), for the user to stop in time."""
    if "context" not in saved:
        return "an unknown test (a file of an earlier version)"
    if saved["weights"] != weights:
        return "other weights"
    old, new = _leaves(json.loads(saved["context"])), _leaves(json.loads(context))
    changes = [f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    return "other settings: " + ", ".join(changes)


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {name: leaf for key, sub in tree.items() for name, leaf in _leaves(sub, f"{prefix}{key}.").items()}


def _to_cpu(value: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    return [v.detach().cpu() for v in value] if isinstance(value, list) else value.detach().cpu()
