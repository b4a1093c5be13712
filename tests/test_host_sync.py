"""No host read inside the training step on the GPU path (no ``.item()`` on the hot path), and a non-finite loss
there is skipped on the device by the fused Adam, then stops the run at the next check.

The GPU path is forced on the CPU (``VAEModule.host_reads_free = False``), and inside ``training_step`` and
``on_train_batch_end`` every Tensor method that copies a value to the host raises. On a GPU each of them would wait for
the queued work. The first batch is a logging step (it reads the running means by design) and is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import pytest
import torch

from vae_experiments.module import VAEModule
from vae_experiments.objectives.base import StepContext, StepOutput
from vae_experiments.train import build, build_trainer

HOST_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__format__")

TINY = ["dataset=digits", "latent_dim=4", "encoder.hidden=[16]", "decoder.hidden=[16]", "dataset.batch_size=16"]
RUN = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=4",
    "+trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1000",
    "~callbacks.progress_bar",
    "~callbacks.image_grids",
    "test=false",
]
SETUPS = {
    "elbo": [],
    "beta_free_bits": ["objective.beta=2.0", "objective.free_bits=0.1"],
    "iwae": ["objective=iwae", "objective.k=4"],
    "soft_free_bits": ["objective=soft_free_bits", "objective.free_bits=2.0"],
    "rho": ["posterior=rho"],
    "iaf_af_prior": ["posterior=iaf", "prior=af", "objective.free_bits_groups=all"],
    "constrained_kl": ["objective=constrained_kl", "objective.kappa=2.0"],
    "soft_intro": ["objective=soft_intro", "objective.beta_neg=16.0"],
}


@contextmanager
def host_reads_forbidden() -> Iterator[None]:
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def refuse(name: str) -> Callable[..., Any]:
        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"host read Tensor.{name} inside the training step")

        return method

    for name in saved:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@contextmanager
def cuda_syncs_forbidden() -> Iterator[None]:
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def guard(module: VAEModule, name: str, checked: list[int], forbid: Callable[[], Any] = host_reads_forbidden) -> None:
    """Wrap ``module.<name>`` so that from the second training batch on it runs inside ``forbid()``."""
    inner = getattr(module, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if module.trainer.fit_loop.epoch_loop.batch_progress.current.ready < 2:
            return inner(*args, **kwargs)
        with forbid():
            out = inner(*args, **kwargs)
        checked.append(1)
        return out

    setattr(module, name, wrapped)


def fit_on_the_gpu_path(cfg: Any) -> VAEModule:
    L.seed_everything(0)
    datamodule, module = build(cfg)
    module.host_reads_free = False
    checked: list[int] = []
    guard(module, "training_step", checked)
    guard(module, "on_train_batch_end", checked)
    build_trainer(cfg).fit(module, datamodule=datamodule)
    assert len(checked) == 6  # batches 2-4, two hooks each
    return module


@pytest.mark.parametrize("setup", list(SETUPS))
def test_training_step_reads_nothing_on_the_host(make_cfg, setup: str) -> None:
    fit_on_the_gpu_path(make_cfg(*TINY, *SETUPS[setup], *RUN, fast=False))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("setup", list(SETUPS))
def test_no_host_device_sync_inside_the_step_on_a_gpu(make_cfg, setup: str) -> None:
    """The same on a real GPU under ``trainer=gpu`` (bf16-mixed, data on the device): CUDA's own sync detector."""
    cfg = make_cfg(*TINY, *SETUPS[setup], *RUN, "trainer=gpu", fast=False)
    L.seed_everything(0)
    datamodule, module = build(cfg)
    checked: list[int] = []
    guard(module, "training_step", checked, cuda_syncs_forbidden)
    guard(module, "on_train_batch_end", checked, cuda_syncs_forbidden)
    build_trainer(cfg).fit(module, datamodule=datamodule)
    assert len(checked) == 6


def test_the_guard_catches_a_host_read(make_cfg) -> None:
    """The forbidden reads are the ones that matter: an ``.item()`` in the step fails the check above."""
    cfg = make_cfg(*TINY, *RUN, fast=False)
    datamodule, module = build(cfg)
    module.host_reads_free = False
    step = module.objective.training_step

    def reading_step(ctx: StepContext, x: torch.Tensor) -> StepOutput:
        out = step(ctx, x)
        out.loss.item()
        return out

    module.objective.training_step = reading_step
    guard(module, "training_step", [])
    with pytest.raises(AssertionError, match=r"host read Tensor.item"):
        build_trainer(cfg).fit(module, datamodule=datamodule)


def poison_after(module: VAEModule, batches: int) -> dict[str, torch.Tensor]:
    """Make every training loss from batch ``batches`` on NaN; return the weights as they were after that many."""
    step = module.objective.training_step
    snapshot: dict[str, torch.Tensor] = {}

    def poisoned(ctx: StepContext, x: torch.Tensor) -> StepOutput:
        if module.trainer.fit_loop.epoch_loop.batch_progress.current.ready > batches:
            if not snapshot:
                snapshot.update({k: v.clone() for k, v in ctx.model.state_dict().items()})
            x = torch.full_like(x, float("nan"))
        return step(ctx, x)

    module.objective.training_step = poisoned
    return snapshot


@pytest.mark.parametrize("setup", ["elbo", "soft_intro"])
def test_a_non_finite_loss_is_skipped_on_the_device_and_stops_the_run(make_cfg, setup: str) -> None:
    """Batches 3-4 are NaN: the fused Adam applies neither (the weights stay those after batch 2) and the run stops
    at the end of the epoch with the objective's advice, without a host read in between."""
    cfg = make_cfg(*TINY, *SETUPS[setup], *RUN, fast=False)
    datamodule, module = build(cfg)
    module.host_reads_free = False
    good = poison_after(module, 2)
    with pytest.raises(FloatingPointError, match=module.objective.non_finite_advice.split(",")[0]):
        build_trainer(cfg).fit(module, datamodule=datamodule)
    assert good, "the poisoned batches did not run"
    for key, value in module.model.state_dict().items():
        assert torch.equal(value, good[key]), key
    for optimizer in module.trainer.optimizers:
        assert "found_inf" not in optimizer.__dict__
        assert all(int(s["step"]) == 2 for s in optimizer.state.values())
