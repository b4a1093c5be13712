"""Soft-IntroVAE: the training step against the paper's losses written out by hand (docs/soft_intro_vae.md), freezing,
warm-up, NaN, refusal of autoregressive decoders, the IntroVAE nets, and the 2-D histogram metrics."""

from __future__ import annotations

import copy
import math
from functools import partial
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vae_experiments.distributions.likelihoods import GaussianLikelihood
from vae_experiments.distributions.posteriors import DiagonalGaussianPosterior
from vae_experiments.distributions.priors import StandardNormalPrior
from vae_experiments.errors import ConfigError
from vae_experiments.metrics.toy2d import grid_normalised_elbo, histogram, jensen_shannon, kl_divergence
from vae_experiments.model import VAE, build_model
from vae_experiments.module import VAEModule
from vae_experiments.nets.intro import IntroDecoder, IntroEncoder
from vae_experiments.nets.mlp import MLPDecoder, MLPEncoder
from vae_experiments.objectives.base import StepContext
from vae_experiments.objectives.soft_intro import SoftIntroVAE

B, D, Z = 3, 4, 2
BETAS = {"beta_rec": 0.7, "beta_kl": 1.3, "beta_neg": 2.0, "gamma_r": 0.5}
HALF_LOG_PI = 0.5 * math.log(math.pi)


def tiny_model(data_dim: int = D, latent: int = Z) -> VAE:
    parts = {
        "encoder": partial(MLPEncoder, hidden=[5], act="tanh"),
        "posterior": DiagonalGaussianPosterior,
        "prior": StandardNormalPrior,
        "decoder": partial(MLPDecoder, hidden=[5], act="tanh"),
        # sigma^2 = 1/2 and recon_offset = log(pi)/2: the reconstruction error is the sum of squared errors
        "likelihood": partial(GaussianLikelihood, sigma="fixed", sigma_init=math.sqrt(0.5)),
    }
    return build_model(parts, (data_dim,), latent)


def strict_guard(loss: Tensor, *optimizers: Any, detail: Any = None) -> None:
    """The guard of a CPU run: a non-finite loss stops the step before ``optimizers`` apply it."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss{detail() if detail is not None else ''}")


class Recorder:
    """A plain ``StepContext`` for the objective, no Lightning; records the state after every optimiser step."""

    def __init__(self, model: VAE, objective: SoftIntroVAE, epoch: int = 0) -> None:
        self.model = model
        self.opts = objective.configure_optimizers(model, partial(torch.optim.Adam, lr=1e-2))
        self.after_step: list[tuple[str, dict[str, Tensor], list[bool]]] = []
        for name, opt in zip(("encoder", "decoder"), self.opts, strict=True):
            opt.register_step_post_hook(partial(self._record, name))
        self.ctx = StepContext(model, self.opts, global_step=0, epoch=epoch, guard_finite=strict_guard)
        self.logged: dict[str, Tensor] = {}

    def _record(self, name: str, opt: Any, args: Any, kwargs: Any) -> None:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.after_step.append((name, state, [p.grad is not None for p in self.model.parameters()]))

    def step(self, objective: SoftIntroVAE, x: Tensor) -> dict[str, Tensor]:
        out = objective.training_step(self.ctx, x)
        assert out.loss is None  # the objective steps its own optimisers
        self.logged = out.logs
        self.ctx.global_step += 2
        return out.logs


# --- the formulas of docs/soft_intro_vae.md, independently of the objective's code --------------------------------


def enc(m: VAE, x: Tensor) -> tuple[Tensor, Tensor]:
    mu, logvar = m.posterior.head(m.encoder(x)).chunk(2, -1)
    return mu, logvar


def reparam(mu: Tensor, logvar: Tensor, noise: Tensor) -> Tensor:
    return mu + torch.exp(0.5 * logvar) * noise


def kl(mu: Tensor, logvar: Tensor) -> Tensor:
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)


def sse(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).sum(-1)


def dec(m: VAE, z: Tensor) -> Tensor:
    return m.decoder(z)


def split_params(m: VAE) -> tuple[list[str], list[str]]:
    names = [n for n, _ in m.named_parameters()]
    enc_side = [n for n in names if n.startswith(("encoder.", "posterior."))]
    dec_side = [n for n in names if n.startswith("decoder.")]
    return enc_side, dec_side


def test_one_step_matches_reference_losses_and_freezes_each_side() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    objective = SoftIntroVAE(**BETAS, recon_offset=HALF_LOG_PI)
    module = Recorder(model, objective)
    x = torch.rand(B, D)
    m0 = copy.deepcopy(model)

    torch.manual_seed(123)
    module.step(objective, x)
    torch.manual_seed(123)  # the step's draws, in its documented order (x_r with x_f in one encoder pass: no BatchNorm)
    eps, n_x = torch.randn(B, Z), torch.randn(B, Z)
    n_r, n_f = torch.randn(2 * B, Z).split(B)
    n_r2, n_f2 = torch.randn(2 * B, Z).split(B)

    s = 1 / D
    b_rec, b_kl, b_neg, g_r = BETAS["beta_rec"], BETAS["beta_kl"], BETAS["beta_neg"], BETAS["gamma_r"]
    with torch.no_grad():
        # encoder step: everything from the initial weights
        x_f = dec(m0, eps)
        mu, lv = enc(m0, x)
        z_x = reparam(mu, lv, n_x)
        x_r = dec(m0, z_x)
        mu_r, lv_r = enc(m0, x_r)
        mu_f, lv_f = enc(m0, x_f)
        rec_rec = sse(x_r, dec(m0, reparam(mu_r, lv_r, n_r)))
        rec_fake = sse(x_f, dec(m0, reparam(mu_f, lv_f, n_f)))
        exp_rec = torch.exp(-2 * s * (b_rec * rec_rec + b_neg * kl(mu_r, lv_r)))
        exp_fake = torch.exp(-2 * s * (b_rec * rec_fake + b_neg * kl(mu_f, lv_f)))
        loss_e = s * (b_rec * sse(x, x_r).mean() + b_kl * kl(mu, lv).mean()) + 0.5 * 0.5 * (
            exp_rec.mean() + exp_fake.mean()
        )
        # decoder step: the updated encoder, the initial decoder, the same eps and z_x
        enc_names, dec_names = split_params(model)
        after_encoder_step = module.after_step[0][1]
        m1 = copy.deepcopy(m0)
        m1.load_state_dict({**m0.state_dict(), **{n: after_encoder_step[n] for n in enc_names}})
        mu_r2, lv_r2 = enc(m1, x_r)
        mu_f2, lv_f2 = enc(m1, x_f)
        rec_rec2 = sse(x_r, dec(m0, reparam(mu_r2, lv_r2, n_r2)))
        rec_fake2 = sse(x_f, dec(m0, reparam(mu_f2, lv_f2, n_f2)))
        loss_d = s * (
            b_rec * sse(x, x_r).mean()
            + 0.5 * b_kl * (kl(mu_r2, lv_r2).mean() + kl(mu_f2, lv_f2).mean())
            + 0.5 * g_r * b_rec * (rec_rec2.mean() + rec_fake2.mean())
        )

    logged = module.logged
    torch.testing.assert_close(logged["loss_e"], loss_e, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logged["loss_d"], loss_d, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logged["rec"], sse(x, x_r).mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logged["kl_fake"], kl(mu_f, lv_f).mean(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logged["diff_kl"], kl(mu_f, lv_f).mean() - kl(mu, lv).mean(), rtol=1e-5, atol=1e-6)
    # the true ELBO uses the full Gaussian log-density (the constant D log(pi)/2 included)
    elbo = -(sse(x, x_r) + D * HALF_LOG_PI + kl(mu, lv)).mean()
    torch.testing.assert_close(logged["elbo"], elbo, rtol=1e-5, atol=1e-6)

    start = m0.state_dict()
    (phase_e, after_e, grad_flags_e), (phase_d, after_d, grad_flags_d) = module.after_step
    assert (phase_e, phase_d) == ("encoder", "decoder")
    assert all(torch.equal(after_e[n], start[n]) for n in dec_names)  # decoder frozen in the encoder step
    assert all(not torch.equal(after_e[n], start[n]) for n in enc_names)
    assert all(torch.equal(after_d[n], after_e[n]) for n in enc_names)  # encoder frozen in the decoder step
    assert all(not torch.equal(after_d[n], after_e[n]) for n in dec_names)
    n_enc = len([*model.encoder.parameters(), *model.posterior.parameters()])
    # the encoder step's backward reached the encoder side only; the decoder step's left the encoder's gradients be
    assert grad_flags_e == [True] * n_enc + [False] * (len(grad_flags_e) - n_enc)
    assert grad_flags_d == [True] * len(grad_flags_d)
    assert all(p.requires_grad for p in model.parameters())


def test_warm_up_epochs_take_the_plain_vae_loss_with_both_optimisers() -> None:
    torch.manual_seed(1)
    model = tiny_model()
    objective = SoftIntroVAE(**BETAS, vae_epochs=2, recon_offset=HALF_LOG_PI)
    module = Recorder(model, objective, epoch=1)
    x = torch.rand(B, D)
    m0 = copy.deepcopy(model)
    torch.manual_seed(5)
    module.step(objective, x)
    torch.manual_seed(5)
    noise = torch.randn(B, Z)
    with torch.no_grad():
        mu, lv = enc(m0, x)
        expected = (
            BETAS["beta_rec"] * sse(x, dec(m0, reparam(mu, lv, noise))).mean() + BETAS["beta_kl"] * kl(mu, lv).mean()
        )
    torch.testing.assert_close(module.logged["loss_vae"], expected, rtol=1e-5, atol=1e-6)
    assert "loss_e" not in module.logged
    start, after = m0.state_dict(), module.after_step[-1][1]
    assert all(not torch.equal(after[n], start[n]) for n, _ in model.named_parameters())


def test_schedules_follow_the_iteration_two_optimiser_steps_each() -> None:
    objective = SoftIntroVAE(beta_neg=lambda step: 10.0 * (step + 1), beta_kl=0.5)
    objective.set_step(0)
    assert float(objective.beta_neg) == 10.0
    objective.set_step(9)  # Lightning's global step counts both updates: iteration 4
    assert float(objective.beta_neg) == 50.0
    assert objective.beta_kl == 0.5  # a constant stays a float, so the step uses it as written


def test_nan_stops_before_any_update_with_a_clear_message() -> None:
    model = tiny_model()
    # a reconstruction error far below zero (as a learned sigma can give) overflows exp(-2s(...)) to inf
    objective = SoftIntroVAE(**BETAS, recon_offset=1e4)
    module = Recorder(model, objective)
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(B, D)
    with pytest.raises(FloatingPointError, match=r"non-finite encoder loss at iteration 0.*not applied"):
        module.step(objective, x)
    assert module.after_step == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


class ARDecoder(nn.Module):
    autoregressive = True


def test_autoregressive_decoder_is_refused_in_one_line() -> None:
    model = tiny_model()
    model.decoder = ARDecoder()
    with pytest.raises(ConfigError, match="autoregressive ARDecoder") as info:
        SoftIntroVAE().refuse_unsupported(model, None)
    assert "\n" not in str(info.value)


class FlowLikePrior(StandardNormalPrior):
    """A prior with a learnable parameter and no distribution(): the KL must be the Monte-Carlo estimate."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.shift = nn.Parameter(torch.zeros(latent_dim))

    def distribution(self) -> None:
        return None

    def log_prob(self, z: Tensor) -> Tensor:
        return super().log_prob(z - self.shift)


def test_monte_carlo_kl_and_learned_prior_on_the_encoder_side() -> None:
    torch.manual_seed(2)
    model = tiny_model()
    model.prior = FlowLikePrior(Z)
    objective = SoftIntroVAE(**BETAS)
    module = Recorder(model, objective)
    module.step(objective, torch.rand(B, D))
    assert torch.isfinite(module.logged["kl_real"])
    (_, after_e, _), (_, after_d, _) = module.after_step
    assert not torch.equal(after_e["prior.shift"], torch.zeros(Z))
    assert torch.equal(after_d["prior.shift"], after_e["prior.shift"])


def test_lightning_fit_with_manual_optimisation_and_warm_up() -> None:
    torch.manual_seed(3)
    model = tiny_model()
    objective = SoftIntroVAE(**BETAS, vae_epochs=1, recon_offset=HALF_LOG_PI)
    module = VAEModule(model, objective, partial(torch.optim.Adam, lr=2e-4), nll_samples=4)
    data = torch.rand(12, D)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=6))
    assert trainer.global_step == 12  # 6 iterations of two updates each
    metrics = trainer.callback_metrics
    for key in ("train/loss_e", "train/loss_d", "train/kl_fake", "train/diff_kl", "train/elbo", "val/elbo"):
        assert torch.isfinite(metrics[key]), key


@pytest.mark.parametrize(("shape", "channels"), [((1, 28, 28), (4, 8)), ((3, 32, 32), (4, 8, 16)), ((1, 9, 9), (4,))])
def test_intro_nets_round_trip_image_shapes(shape: tuple[int, ...], channels: tuple[int, ...]) -> None:
    encoder = IntroEncoder(shape, channels)
    decoder = IntroDecoder(3, (2 * shape[0], *shape[1:]), shape, channels)
    h = encoder(torch.rand(2, *shape))
    size = shape[1] // 2 ** len(channels)
    assert h.shape == (2, channels[-1] * size * size) == (2, encoder.out_features)
    assert decoder(torch.randn(2, 3)).shape == (2, 2 * shape[0], *shape[1:])


def test_intro_nets_refuse_vectors_and_too_many_halvings() -> None:
    with pytest.raises(ValueError, match="encoder=mlp"):
        IntroEncoder((2,))
    with pytest.raises(ValueError, match="below 1 pixel"):
        IntroDecoder(2, (1, 4, 4), None, (4, 4, 4))


def test_histogram_divergences_on_known_histograms() -> None:
    p = torch.tensor([[0.5, 0.5], [0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.75], [0.0, 0.0]], dtype=torch.float64)
    assert float(jensen_shannon(p, p)) == pytest.approx(0.0, abs=1e-12)
    assert float(kl_divergence(p, p)) == pytest.approx(0.0, abs=1e-12)
    assert float(jensen_shannon(p, q)) == pytest.approx(float(jensen_shannon(q, p)), abs=1e-12)
    closed = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(kl_divergence(p, q)) == pytest.approx(closed, abs=1e-8)
    disjoint = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert float(jensen_shannon(p, disjoint)) == pytest.approx(math.log(2), abs=1e-8)


class GaussianELBO:
    """A stand-in model whose 'ELBO' is log N(x; 0, I) + c: a normalised density shifted by a constant."""

    def __init__(self, c: float) -> None:
        self.c = c

    def terms(self, x: Tensor, k: int) -> Any:
        log_density = -0.5 * x.pow(2).sum(-1) - math.log(2 * math.pi)
        return type("Terms", (), {"elbo": log_density + self.c})()


def test_histogram_bins_and_grid_normalisation() -> None:
    points = torch.tensor([[-0.5, -0.5], [0.5, 0.5], [0.5, 0.6], [9.0, 9.0]])
    hist = histogram(points, bins=2, half_width=1.0)  # the point outside the square is dropped
    torch.testing.assert_close(hist, torch.tensor([[1 / 3, 0.0], [0.0, 2 / 3]], dtype=torch.float64))
    data = torch.randn(50, 2)
    exact = float((-0.5 * data.pow(2).sum(-1) - math.log(2 * math.pi)).mean())
    for c in (0.0, 7.0):  # a normalised density keeps its log-density; an additive constant cancels
        gn = grid_normalised_elbo(GaussianELBO(c), data, half_width=6.0, grid_points=256)  # type: ignore[arg-type]
        assert float(gn) == pytest.approx(exact, abs=1e-4)
