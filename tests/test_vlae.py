"""VLAE end to end: free bits and soft free bits against their formulas, weight averaging at test, the Monte-Carlo
KL flagged in the logs, every receptive-field option causal, and a fast_dev_run of each VLAE experiment."""

from __future__ import annotations

import json
import logging
import math

import lightning as L
import pytest
import torch
from torch.distributions import kl_divergence

from tests.test_pixelcnn import LATENT, expected, jacobian, make
from vae_experiments.errors import ConfigError
from vae_experiments.objectives.elbo import SoftFreeBits
from vae_experiments.train import build, build_trainer, train

SMALL = ["dataset=digits", "latent_dim=4", "encoder.hidden=[16]", "decoder.hidden=[16]"]
# like conftest.FAST, in overrides valid whether or not the trainer config has enable_progress_bar
RUN = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=1",
    "eval.nll_samples=8",
    "~callbacks.progress_bar",
    "++trainer.enable_progress_bar=false",
]
QUIET = [*RUN, "~callbacks.image_grids"]


def test_soft_free_bits_gamma_follows_the_rule_on_a_hand_made_kl_sequence():
    obj = SoftFreeBits(free_bits=10.0, threshold=0.05, rate=0.1, gamma_init=0.5)
    # above lambda (1 + threshold) = 10.5: x1.1; inside [10, 10.5]: unchanged; below 10: x0.9; capped at 1
    kls = [11.0, 11.0, 10.2, 10.5, 9.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0, 9.99]
    gamma, want = 0.5, []
    for kl in kls:
        gamma = min(1.0, gamma * 1.1) if kl > 10.5 else gamma * 0.9 if kl < 10.0 else gamma
        want.append(gamma)
    got = []
    for kl in kls:
        obj.update_gamma(kl)
        got.append(float(obj.gamma))
    assert got == pytest.approx(want)
    assert got[1] == pytest.approx(0.605) and got[2] == got[1] == got[3] and got[4] == pytest.approx(0.5445)
    assert max(got) == 1.0 and got[-1] == pytest.approx(0.9)
    for _ in range(300):  # bounded below by 0, never reaches it
        obj.update_gamma(0.0)
    assert 0 < float(obj.gamma) < 1e-10
    assert "gamma" in dict(obj.named_buffers())  # checkpoints carry it


def test_soft_free_bits_loss_is_recon_plus_gamma_kl_and_gamma_moves_after_each_step(make_cfg):
    cfg = make_cfg(*SMALL, *QUIET, "objective=soft_free_bits", "objective.free_bits=1000.0", "test=false", fast=False)
    datamodule, module = build(cfg)
    obj: SoftFreeBits = module.objective
    obj.gamma.fill_(0.5)
    x = torch.rand(8, *module.model.data_shape).round()
    torch.manual_seed(1)
    t = module.model.terms(x)
    torch.manual_seed(1)
    loss, logs = obj.loss(module.model, x)
    torch.testing.assert_close(loss, -t.log_px_z.mean() + 0.5 * t.kl.mean())
    assert float(logs["gamma"]) == 0.5
    build_trainer(cfg).fit(module, datamodule=datamodule)  # 3 steps, KL far below lambda: 0.5 * 0.9^3
    assert float(obj.gamma) == pytest.approx(0.5 * 0.9**3)


@pytest.mark.parametrize("groups", ["dim", "all"])
def test_free_bits_loss_equals_the_formula(make_cfg, groups):
    cfg = make_cfg(
        *SMALL,
        *QUIET,
        f"objective.free_bits_groups={groups}",
        "objective.free_bits=0.3",
        "objective.beta=2.0",
        fast=False,
    )
    _, module = build(cfg)
    model, obj = module.model, module.objective
    x = torch.rand(16, *model.data_shape).round()
    torch.manual_seed(3)
    q = model.encode(x)
    z = q.rsample()
    recon = model.decode(z, x).log_prob(x)
    per_dim = kl_divergence(q.base_dist, model.prior.distribution().base_dist)  # (B, d)
    per_group = per_dim.mean(0) if groups == "dim" else per_dim.sum(1).mean()[None]
    for lam in (
        float(per_group.detach().median()) + 1e-4,
        float(per_group.detach().max()) + 1.0,
    ):  # some groups clamped / all
        obj.free_bits = lam
        kl_fb = torch.stack([g.clamp(min=lam) for g in per_group]).sum()
        torch.manual_seed(3)
        loss, logs = obj.loss(model, x)
        torch.testing.assert_close(loss, -recon.mean() + 2.0 * kl_fb)
        torch.testing.assert_close(logs["elbo"], (recon - per_dim.sum(1)).mean())  # the true bound is still logged
    assert groups == "all" or 0 < (per_group > per_group.median()).sum() < model.latent_dim


def test_free_bits_per_dimension_refused_before_training_with_a_monte_carlo_kl(make_cfg):
    cfg = make_cfg(*SMALL, *QUIET, "prior=af", "prior.hidden_units=16", "objective.free_bits=0.1", fast=False)
    with pytest.raises(ConfigError, match="free_bits_groups=all"):
        build(cfg)
    build(
        make_cfg(
            *SMALL,
            "prior=af",
            "prior.hidden_units=16",
            "objective.free_bits=0.1",
            "objective.free_bits_groups=all",
            fast=False,
        )
    )


@pytest.mark.parametrize(
    ("overrides", "estimator"),
    [
        ([], "analytic"),
        (["prior=af", "prior.hidden_units=16"], "mc"),
        (["posterior=iaf", "posterior.hidden_units=16"], "mc"),
    ],
)
def test_the_kl_estimator_is_logged_at_startup_and_in_metrics(make_cfg, tmp_path, caplog, overrides, estimator):
    cfg = make_cfg(*SMALL, *QUIET, *overrides, "trainer.limit_train_batches=1", fast=False)
    with caplog.at_level(logging.INFO, logger="vae_experiments.train"):
        metrics = train(cfg)
    assert metrics["kl_estimator"] == estimator
    assert json.loads((tmp_path / "metrics.json").read_text())["kl_estimator"] == estimator
    assert f"kl_estimator: {estimator}" in caplog.text
    assert ("log q(z|x) - log p(z)" in caplog.text) == (estimator == "mc")
    hparams = next(tmp_path.rglob("hparams.yaml")).read_text()
    assert f"kl_estimator: {estimator}" in hparams


class _RecordWeights(L.Callback):
    """The live weights after the last optimiser step, and the weights the test loop runs with."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.live = [p.detach().clone() for p in pl_module.model.parameters()]

    def on_test_start(self, trainer, pl_module) -> None:
        self.tested = [p.detach().clone() for p in pl_module.model.parameters()]


def test_test_metrics_use_the_polyak_averaged_weights(make_cfg):
    cfg = make_cfg(*SMALL, *QUIET, "callbacks=ema", "callbacks.ema.decay=0.5", "optimizer.lr=0.05", fast=False)
    datamodule, module = build(cfg)
    init = [p.detach().clone() for p in module.model.parameters()]
    trainer = build_trainer(cfg)
    record = _RecordWeights()
    trainer.callbacks.append(record)
    trainer.fit(module, datamodule=datamodule)
    ema = next(cb for cb in trainer.callbacks if isinstance(cb, L.pytorch.callbacks.EMAWeightAveraging))
    averaged = list(ema._average_model.module.model.parameters())
    trainer.test(module, datamodule=datamodule, verbose=False)
    assert trainer.callback_metrics["test/nll"].isfinite()
    for tested, avg in zip(record.tested, averaged, strict=True):
        torch.testing.assert_close(tested, avg)
    moved = [not torch.equal(live, avg) for live, avg in zip(record.live, averaged, strict=True)]
    assert any(moved)  # the averaged weights are not the last step's
    changed = [not torch.equal(a, s) for a, s in zip(averaged, init, strict=True)]
    assert any(changed)  # nor the initial ones


@pytest.mark.parametrize(
    "cfg",
    [
        {"tied": False},
        {"conditional": False},
        {"res1x1_every": 0},
        {"res1x1_blocks": 0, "kernel_size": 5},
        {"tied": False, "block": "gated", "kernel_height": 2},
    ],
)
def test_other_settings_are_causal_with_the_advertised_field(cfg):
    shape = (1, 6, 7)
    dec = make(shape, n_layers=2, **cfg)
    width, height = map(int, dec.receptive_field.split("x"))
    jac = jacobian(dec, shape)
    for i in range(6):
        for j in range(7):
            assert torch.equal(jac[0, i, j] != 0, expected(shape, width, height, None, i, j)), (i, j)


@pytest.mark.parametrize(
    ("shape", "cfg"), [((1, 7, 9), {"n_layers": 2}), ((3, 6, 8), {"n_layers": 1, "kernel_size": 5})]
)
def test_the_sampling_window_gives_the_full_images_parameters(shape, cfg):
    dec = make(shape, **cfg).double()
    z, x = torch.randn(2, LATENT, dtype=torch.float64), torch.rand(2, *shape, dtype=torch.float64)
    cond = dec.base(z)
    full = dec._net(x, cond)
    for i in range(shape[1]):
        for j in range(shape[2]):
            rows, cols = dec.window(i, j)
            part = dec._net(x[:, :, rows, cols], cond[:, :, rows, cols])
            torch.testing.assert_close(part[..., -1, j - cols.start], full[..., i, j])


# synthetic images small enough that the pixel-by-pixel samples and reconstructions take a second
TINY_IMAGES = ["callbacks.image_grids.n=2", "eval.nll_samples=2", "++dataset.eval_batch_size=4"]


@pytest.mark.parametrize(
    ("experiment", "overrides"),
    [
        ("vlae", ["dataset=synthetic", "dataset.shape=[1,12,12]", "dataset.binarize=dynamic"]),
        ("pixelcnn", ["dataset=synthetic", "dataset.shape=[1,12,12]", "dataset.binarize=dynamic"]),
        (
            "vlae_cifar10",
            [
                "dataset=synthetic",
                "dataset.shape=[3,12,12]",
                "dataset.batch_size=4",
                "latent_dim=32",
                "prior.hidden_units=64",
                "encoder.channels=[8,8,8]",
                "decoder.base.channels=[8,8,8]",
                "decoder.hidden_channels=8",
                "likelihood.num_mixtures=2",
            ],
        ),
    ],
)
def test_experiment_fast_dev_run(make_cfg, tmp_path, experiment, overrides):
    cfg = make_cfg(f"experiment={experiment}", "+trainer.fast_dev_run=true", *RUN, *TINY_IMAGES, *overrides, fast=False)
    metrics = train(cfg)
    assert all(math.isfinite(metrics[k]) for k in ("test/nll", "test/elbo", "test/kl"))
    assert metrics["kl_estimator"] == ("analytic" if experiment == "pixelcnn" else "mc")
    assert metrics["decoder/receptive_field"] == {"vlae": "13x6", "pixelcnn": "13x6", "vlae_cifar10": "7x3"}[experiment]
    assert (tmp_path / "samples.png").exists() and (tmp_path / "reconstructions.png").exists()
