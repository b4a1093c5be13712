"""Whole-step capture: the recording and replay logic, and a fit through it, on the CPU with a stand-in for CUDA
graphs; the real graphs run in the gpu-marked test at the end."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor

from vae_experiments.capture import CapturedStep, blocker
from vae_experiments.module import VAEModule
from vae_experiments.train import build, build_trainer

TINY = ["latent_dim=4", "encoder.hidden=[16]", "decoder.hidden=[16]", "dataset.batch_size=16"]
RUN = [
    "trainer.max_epochs=3",
    "dataset.train_subset=72",  # 4 batches of 16 and a short one of 8
    "+trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=2",
    "~callbacks.progress_bar",
    "~callbacks.image_grids",
    "test=false",
]


class Rerun:
    """Stands in for CUDA graphs on the CPU. Like a recording, ``record`` runs nothing; a "replay" runs the step
    again on the static batch and overwrites the recorded outputs, as a graph replay does."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.warmed = self.recorded = self.replayed = 0

    def warm(self, run: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        self.warmed += 1
        return run()

    def record(self, run: Callable[[], dict[str, Tensor]]) -> tuple[Callable[[], None], dict[str, Tensor]]:
        if self.fail is not None:
            raise self.fail
        self.recorded += 1
        outputs: dict[str, Tensor] = {}

        def replay() -> None:
            self.replayed += 1
            outputs.clear()
            outputs.update(run())

        return replay, outputs


def test_warm_up_then_record_once_per_key_then_replay_on_the_static_batch() -> None:
    backend = Rerun()
    prepared: list[int] = []
    capture = CapturedStep(backend, warmup=2, prepare=lambda: prepared.append(1))
    seen: list[Tensor] = []

    def step(x: Tensor) -> dict[str, Tensor]:
        seen.append(x)
        return {"sum": x.sum()}

    batches = [torch.full((3,), float(i)) for i in range(5)]
    results = [capture("a", step, b) for b in batches]
    assert [replayed for _, replayed in results] == [False, False, True, True, True]
    assert [float(logs["sum"]) for logs, _ in results[:2]] == [0.0, 3.0]
    assert float(results[-1][0]["sum"]) == 12.0  # the last batch, copied into the static buffer
    assert seen[0] is batches[0] and all(x is seen[2] for x in seen[2:])  # replays read the one static buffer
    assert (backend.warmed, backend.recorded, backend.replayed) == (2, 1, 3)
    assert prepared == [1]  # before the one recording
    capture("b", step, torch.ones(2))  # another shape or variant: warmed up and recorded on its own
    assert backend.warmed == 3 and capture.active


def test_a_failed_recording_falls_back_to_eager_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    capture = CapturedStep(Rerun(fail=RuntimeError("operation not permitted when stream is capturing")), warmup=1)
    step = lambda x: {"sum": x.sum()}  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="vae_experiments.capture"):
        out = [capture("a", step, torch.full((2,), float(i))) for i in range(4)]
    assert [float(logs["sum"]) for logs, _ in out] == [0.0, 2.0, 4.0, 6.0]  # every batch ran, eagerly
    assert not capture.active and "not permitted when stream is capturing" in capture.reason
    assert sum("capture: off" in r.message for r in caplog.records) == 1


def fit(make_cfg: Any, overrides: list[str], backend: Rerun | None) -> VAEModule:
    cfg = make_cfg(*TINY, *overrides, *RUN, fast=False)
    L.seed_everything(0)
    datamodule, module = build(cfg)
    if backend is not None:
        module.use_capture(CapturedStep(backend, warmup=2, prepare=module.drop_gradients))
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule)
    return module


@pytest.mark.parametrize(
    "overrides",
    [[], ["objective=constrained_kl", "objective.kappa=2.0"], ["objective=soft_intro", "objective.beta_neg=16.0"]],
    ids=["elbo", "constrained_kl", "soft_intro"],
)
def test_a_fit_through_the_captured_step_equals_the_eager_fit(make_cfg, overrides: list[str]) -> None:
    """The same weights, buffers (a Lagrange multiplier, BatchNorm statistics), optimiser steps and logged means."""
    eager = fit(make_cfg, overrides, None)
    backend = Rerun()
    captured = fit(make_cfg, overrides, backend)
    # the full batch from its third occurrence on, and the short last batch of the third epoch
    assert backend.recorded == 2 and backend.replayed == 3 * 4 - 2 + 1
    assert captured.trainer.global_step == eager.trainer.global_step > 0
    for (name, a), b in zip(eager.model.state_dict().items(), captured.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for name, value in eager.objective.state_dict().items():
        assert torch.equal(value, captured.objective.state_dict()[name]), name
    for key, value in eager.trainer.callback_metrics.items():
        assert torch.equal(value, captured.trainer.callback_metrics[key]), key


def test_objective_phases_are_recorded_apart(make_cfg) -> None:
    """Soft-IntroVAE's warm-up epoch takes another step than the epochs after it: one recording per phase."""
    backend = Rerun()
    fit(make_cfg, ["objective=soft_intro", "objective.vae_epochs=1"], backend)
    assert backend.recorded == 2  # the warm-up epoch's full batch, then the main phase's (short batches: 1 + 2 < 3)


def trainer_like(**changes: Any) -> SimpleNamespace:
    settings = {
        "strategy": SimpleNamespace(root_device=torch.device("cuda")),
        "world_size": 1,
        "gradient_clip_val": None,
        "accumulate_grad_batches": 1,
        "precision": "bf16-mixed",
    }
    return SimpleNamespace(**{**settings, **changes})


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"strategy": SimpleNamespace(root_device=torch.device("cpu"))}, "not on a CUDA device"),
        ({"world_size": 2}, "data-parallel"),
        ({"gradient_clip_val": 1.0}, "gradient_clip_val"),
        ({"accumulate_grad_batches": 4}, "accumulate_grad_batches"),
        ({"precision": "16-mixed"}, "fp16"),
    ],
)
def test_settings_that_prevent_recording_are_named(changes: dict[str, Any], reason: str | None) -> None:
    found = blocker(trainer_like(**changes))
    assert found == reason if reason is None else reason in found


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "overrides",
    [[], ["objective=iwae", "objective.k=4"], ["objective=constrained_kl"], ["objective=soft_intro"]],
    ids=["elbo", "iwae", "constrained_kl", "soft_intro"],
)
def test_a_gpu_fit_records_and_replays_the_whole_step(make_cfg, overrides: list[str]) -> None:
    """On a GPU: the runner records the step (the log says so), replays it, and the weights move and stay finite."""
    from vae_experiments.train import train

    metrics = train(make_cfg(*TINY, *overrides, "trainer=gpu", "trainer.max_epochs=2", fast=True))
    assert metrics["train/steps"] > 0 and all(
        torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("val/")
    )
