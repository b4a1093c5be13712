"""SOS-VAE: the constrained-KL objective's formula and multiplier, its resume, the mean-only warm-up, the residual nets
at any size, the low-rank output layer's initialisation and the refusal of an autoregressive decoder."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import hydra
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from scripts.sos_results import lag1_autocorr
from vae_experiments.distributions.likelihoods import GaussianLikelihood
from vae_experiments.errors import ConfigError
from vae_experiments.model import VAE
from vae_experiments.nets.sos_resnet import SOSResNetDecoder, SOSResNetEncoder
from vae_experiments.objectives.base import StepContext
from vae_experiments.objectives.constrained_kl import ConstrainedKL
from vae_experiments.train import build, train

NETS = [
    "dataset=synthetic",
    "encoder=sos_resnet",
    "encoder.channels=[4,8]",
    "decoder=sos_resnet",
    "decoder.channels=[4,8]",
    "objective=constrained_kl",
    "latent_dim=3",
]
SMALL = [*NETS, "dataset.shape=[1,8,8]", "likelihood=low_rank_gaussian", "likelihood.rank=2"]


def small_model(make_cfg, *overrides: str) -> tuple[VAE, ConstrainedKL, torch.Tensor]:
    datamodule, module = build(make_cfg(*SMALL, *overrides))
    datamodule.setup("fit")
    x = next(iter(datamodule.train_dataloader()))[:5]
    return module.model, module.objective, x


def test_loss_is_the_damped_lagrangian_with_the_damping_detached(make_cfg) -> None:
    model, obj, x = small_model(make_cfg, "objective.kappa=2.0", "objective.damping=3.0")
    obj.lambda_kl.fill_(0.7)
    b, kappa, damping, lam = x.shape[0], 2.0, 3.0, 0.7

    torch.manual_seed(1)
    loss, logs = obj.loss(model, x)
    grads = torch.autograd.grad(loss, list(model.parameters()))

    torch.manual_seed(1)
    q = model.encode(x)
    z = q.rsample()
    recon = -model.decode(z).log_prob(x).sum()
    kl = kl_divergence(q, Independent(Normal(torch.zeros(3), torch.ones(3)), 1)).sum()
    c = kl - kappa * b
    assert float(loss) == pytest.approx(float(recon + (lam + damping * c) * c) / b, rel=1e-6)
    # the damping coefficient is a constant: the gradient is grad R + (lambda + damping c) grad KL, not + 2 damping c
    surrogate = (recon + (lam + damping * c.detach()) * kl) / b
    want = torch.autograd.grad(surrogate, list(model.parameters()))
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    assert float(logs["kl"]) == pytest.approx(float(kl) / b, rel=1e-6)
    assert float(logs["elbo"]) == pytest.approx(-float(recon + kl) / b, rel=1e-6)


def test_multiplier_ascends_on_the_batch_sum_after_each_step_and_stays_nonnegative(make_cfg) -> None:
    model, obj, x = small_model(make_cfg, "objective.kappa=1.5", "objective.lambda_lr=0.01")
    ctx = StepContext(model)
    lam = 0.0
    for kappa in (1.5, 1.0e6, 1.5):  # the second target is far above any KL: lambda falls to 0 and stays there
        obj.kappa = kappa
        out = obj.training_step(ctx, x)
        kl_sum = float(out.logs["kl"]) * x.shape[0]
        assert float(obj.lambda_kl) == pytest.approx(lam)  # not moved before the weights' step
        obj.after_update(ctx, out)
        lam = max(0.0, lam + 0.01 * (kl_sum - kappa * x.shape[0]))
        assert float(obj.lambda_kl) == pytest.approx(lam, rel=1e-5)
    assert float(obj.lambda_entropy) == 0.0  # no entropy constraint configured


def test_entropy_constraint_adds_its_own_damped_term(make_cfg) -> None:
    model, obj, x = small_model(make_cfg, "objective.target_entropy=-10.0")
    obj.lambda_entropy.fill_(0.2)
    torch.manual_seed(3)
    loss, logs = obj.loss(model, x)
    torch.manual_seed(3)
    base = ConstrainedKL(kappa=obj.kappa, damping=obj.damping).loss(model, x)[0]
    torch.manual_seed(3)
    px = model.decode(model.encode(x).rsample())
    c = px.entropy().sum() - (-10.0) * x.shape[0]
    assert float(loss) == pytest.approx(float(base + (0.2 + obj.damping * c) * c / x.shape[0]), rel=1e-5)
    assert float(logs["entropy"]) == pytest.approx(float(px.entropy().mean()), rel=1e-5)


def test_mean_only_warmup_trains_only_the_mean_channels(make_cfg) -> None:
    model, obj, x = small_model(make_cfg, "objective.mean_only_epochs=1", "likelihood.diagonal=learned")
    out = model.decoder.output_layer
    c = 1
    for epoch, spread_trains in ((0, False), (1, True)):
        model.zero_grad()
        obj.training_step(StepContext(model, epoch=epoch), x).loss.backward()
        assert out.weight.grad[:c].abs().sum() > 0  # the mean always trains
        assert (out.weight.grad[c:].abs().sum() > 0) == spread_trains  # factor and diagonal only after the warm-up


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["likelihood=gaussian", "objective.mean_only_epochs=2"], "use likelihood=low_rank_gaussian"),
        (["likelihood=discretized_logistic", "objective.target_entropy=1.0"], "needs the entropy of p"),
    ],
)
def test_warmup_and_entropy_options_are_refused_where_they_cannot_work(make_cfg, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build(make_cfg(*NETS, "dataset.shape=[3,8,8]", *overrides))


def test_an_autoregressive_decoder_is_refused_with_the_low_rank_likelihood(make_cfg) -> None:
    cfg = make_cfg("dataset=synthetic", "dataset.shape=[1,8,8]", "likelihood=low_rank_gaussian", "decoder=pixelcnn")
    with pytest.raises(ConfigError, match=r"one joint distribution over all pixels.*non-autoregressive decoder"):
        build(cfg)


def test_constrained_objective_drives_the_kl_to_kappa(make_cfg, tmp_path: Path) -> None:
    """Digits under the stiff low-rank Gaussian (diagonal 1e-5) want far more than 6 nats; the multiplier holds the
    training KL at 6 within 3% by the last epoch (the test set's within 10%)."""
    metrics = train(
        make_cfg(
            "dataset.binarize=none",
            "likelihood=low_rank_gaussian",
            "likelihood.rank=2",
            "objective=constrained_kl",
            "objective.kappa=6.0",
            "trainer.max_epochs=20",
            "eval.nll_samples=8",
            "callbacks.progress_bar=null",
            fast=False,
        )
    )
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    last = [r for r in rows if r.get("train/kl")][-1]
    assert float(last["train/kl"]) == pytest.approx(6.0, rel=0.03)
    assert float(last["train/lambda_kl"]) > 100  # the constraint binds: the unconstrained KL would be larger
    assert metrics["test/kl"] == pytest.approx(6.0, rel=0.1)


def test_multiplier_survives_checkpoint_and_resume(make_cfg, tmp_path: Path) -> None:
    tiny = [*SMALL, "objective.kappa=0.1"]  # below the KL from the first step: the multiplier grows
    whole = train(make_cfg(*tiny, "trainer.max_epochs=2", out=tmp_path / "whole"))
    train(make_cfg(*tiny, "trainer.max_epochs=1", out=tmp_path / "half"))
    ckpt = tmp_path / "half" / "checkpoints" / "last.ckpt"
    half_lambda = torch.load(ckpt, weights_only=True)["state_dict"]["objective.lambda_kl"]
    assert float(half_lambda) > 0
    resumed = train(make_cfg(*tiny, "trainer.max_epochs=2", f"ckpt_path={ckpt}", out=tmp_path / "resumed"))
    lambdas = [
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["objective.lambda_kl"]
        for run in ("whole", "resumed")
    ]
    assert float(lambdas[0]) != float(half_lambda)
    torch.testing.assert_close(lambdas[0], lambdas[1], rtol=0, atol=0)
    for metrics in (whole, resumed):
        metrics.pop("train/images_per_sec")
    assert resumed == whole


@pytest.mark.parametrize("shape", [(3, 218, 178), (1, 28, 28), (3, 7, 5), (1, 1, 1)])
def test_residual_nets_round_trip_any_size_exactly(shape: tuple[int, int, int]) -> None:
    channels = (4, 8, 16, 32)
    encoder = SOSResNetEncoder(shape, channels=channels, blocks=2).eval()
    decoder = SOSResNetDecoder(6, (5 * shape[0], *shape[1:]), channels=channels, blocks=2).eval()
    h = encoder(torch.rand(2, *shape))
    assert h.shape == (2, 32)
    assert decoder(torch.randn(2, 6)).shape == (2, 5 * shape[0], *shape[1:])


def test_the_authors_celeba_nets_have_their_layer_plan() -> None:
    encoder = SOSResNetEncoder((3, 218, 178))
    decoder = SOSResNetDecoder(128, (3 * 26, 218, 178))
    # two blocks per resolution; the decoder's first layer is ConvTranspose2d(F, F, kernel = 28x23)
    assert sum(type(m).__name__ == "ResidualBlock" for m in encoder.modules()) == 8
    assert sum(type(m).__name__ == "ResidualBlock" for m in decoder.modules()) == 8
    assert decoder.body[1].kernel_size == (28, 23)
    assert decoder.output_layer.kernel_size == (1, 1) and decoder.output_layer.out_channels == 78


def test_the_likelihood_initialises_the_output_layer_to_a_stiff_half_grey(make_cfg) -> None:
    model, _, _ = small_model(make_cfg)
    model.eval()
    with torch.no_grad():
        px = model.decode(torch.randn(4, 3))
    torch.testing.assert_close(px.mean, torch.full_like(px.mean, 0.5), atol=1e-3, rtol=0)
    assert float(px.variance.max()) < 2e-5  # diag 1e-5 + a factor of ~1e-5-scale weights


@pytest.mark.parametrize(
    ("experiment", "extra"),
    [("sos_vae", ["~likelihood.rank"]), ("sos_vae_fmnist", ["~likelihood.diagonal", "~likelihood.diag_init"])],
)
def test_the_diagonal_baseline_is_one_likelihood_override_away(compose_config, tmp_path, experiment, extra) -> None:
    overrides = [f"experiment={experiment}", "likelihood=gaussian", "likelihood.sigma=per_pixel", *extra]
    cfg = compose_config(overrides, tmp_path)
    likelihood = hydra.utils.instantiate(cfg.likelihood)()
    assert isinstance(likelihood, GaussianLikelihood) and likelihood.num_params(3) == 6
    assert cfg.encoder._target_.endswith("SOSResNetEncoder") and cfg.objective._target_.endswith("ConstrainedKL")


def test_residual_autocorrelation_is_zero_for_white_noise_and_the_overlap_for_a_box_filter() -> None:
    white = torch.randn(400, 1, 16, 16)
    assert abs(float(lag1_autocorr(white).mean())) < 0.02
    box = torch.nn.functional.avg_pool2d(torch.randn(400, 1, 18, 18), 3, stride=1)  # neighbours share 6 of 9 inputs
    assert float(lag1_autocorr(box).mean()) == pytest.approx(6 / 9, abs=0.03)


def test_the_non_finite_message_adds_the_likelihoods_advice(make_cfg) -> None:
    _, module = build(make_cfg(*SMALL))
    message = module._non_finite_message("")
    assert module.objective.non_finite_advice in message and "likelihood.min_diag" in message


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_celeba_setup_trains_under_trainer_gpu(make_cfg) -> None:
    """experiment=sos_vae at full frame (3x218x178, rank 25, the released fixed diagonal 1e-5) under trainer=gpu:
    the low-rank likelihood factorises in every step and the loss stays finite."""
    metrics = train(
        make_cfg(
            "experiment=sos_vae",
            "dataset=synthetic",
            "dataset.shape=[3,218,178]",
            "~dataset.subset",
            "dataset.n_train=100",
            "dataset.val_size=25",
            "dataset.n_test=25",
            "trainer=gpu",
            "trainer.max_epochs=1",
            "eval.nll_samples=4",
            "eval.elbo_samples=2",
        )
    )
    assert metrics["train/steps"] == 3 and math.isfinite(metrics["test/elbo"]) and math.isfinite(metrics["val/elbo"])
