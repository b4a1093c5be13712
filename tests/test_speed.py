"""The fast paths give the same numbers as the slow ones: Distribution-free likelihoods, the chunked NLL, running
means, deferred checks, on-device batches, channels-last, synthetic data; and the benchmark harness runs."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.test_nets import part
from vae_experiments.bench.nll_speed import chunk_sweep, per_example_log_likelihood
from vae_experiments.data.device import DeviceBatches
from vae_experiments.data.memory import InMemoryDataset
from vae_experiments.metrics.nll import importance_sampled_log_likelihood
from vae_experiments.metrics.running import RunningMeans
from vae_experiments.model import build_model
from vae_experiments.module import VAEModule
from vae_experiments.runtime import configure_runtime, wants_channels_last, warn_if_bf16_is_emulated
from vae_experiments.train import build, build_trainer, train

LIKELIHOODS = [
    ("bernoulli", {}),
    ("gaussian", {"sigma": "fixed"}),
    ("gaussian", {"sigma": "learned", "sigma_init": 0.3}),
    ("gaussian", {"sigma": "per_pixel"}),
]


def tiny_model(shape: tuple[int, ...] = (1, 8, 8), likelihood: tuple[str, dict] = ("bernoulli", {}), net="mlp"):
    factories = {
        "encoder": part("encoder", net),
        "posterior": part("posterior", "diagonal"),
        "prior": part("prior", "standard_normal"),
        "decoder": part("decoder", net),
        "likelihood": part("likelihood", likelihood[0], **likelihood[1]),
    }
    return build_model(factories, data_shape=shape, latent_dim=3)


@pytest.mark.parametrize("likelihood", LIKELIHOODS, ids=lambda o: f"{o[0]}-{o[1].get('sigma', '')}")
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 5, 4), (2,), (1, 28, 28)])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "under-bf16-autocast"])
def test_fast_log_likelihood_equals_distribution_log_prob(likelihood, shape, bf16: bool) -> None:
    """Also under bf16 autocast (trainer=gpu, trainer=cpu_bf16), where the likelihood must still compute in fp32."""
    lik = part("likelihood", likelihood[0], **likelihood[1])()
    k, batch = 3, 4
    params = 3 * torch.randn(k, batch, lik.num_params(shape[0]), *shape[1:])
    x = torch.rand(batch, *shape)
    expected = lik(params.reshape(k * batch, *params.shape[2:])).log_prob(x.repeat(k, *[1] * len(shape)))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        fast = lik.log_likelihood(params, x)
    torch.testing.assert_close(fast, expected.view(k, batch), rtol=1e-5, atol=1e-4)


def test_terms_fast_path_matches_distribution_path() -> None:
    model = tiny_model(likelihood=("gaussian", {"sigma": "per_pixel"}))
    x = torch.rand(5, 1, 8, 8)
    z = torch.randn(2, 5, 3)
    flat = z.reshape(10, 3)
    slow = model.decode(flat).log_prob(x.repeat(2, 1, 1, 1)).view(2, 5)
    torch.testing.assert_close(model.log_likelihood(z, x), slow, rtol=1e-5, atol=1e-4)


def test_chunked_nll_agrees_with_per_example_loop_within_monte_carlo_error() -> None:
    torch.manual_seed(1)
    model = tiny_model().eval()
    x = torch.bernoulli(torch.rand(24, 1, 8, 8))
    k = 400
    fast = importance_sampled_log_likelihood(model, x, k, max_rows=24 * 7)  # 58 chunks, the last one short
    slow = per_example_log_likelihood(model, x, k)
    diff = (fast - slow).double()
    se = diff.std() / math.sqrt(len(diff))
    assert abs(diff.mean()) < 4 * se + 1e-3
    assert fast.shape == (24,) and torch.isfinite(fast).all()


def test_chunk_size_keeps_the_cpu_draws_so_the_estimate_agrees_to_rounding() -> None:
    """``eval.nll_max_rows`` only batches the draws: with chunks of whole 16-number blocks (2 samples x 24 images x 3
    dimensions = 144 normal numbers) the estimates equal one pass's to float rounding, where fresh draws would move
    them by Monte-Carlo error (~0.1 nats at k = 40); the benchmark's sweep reports the same."""
    torch.manual_seed(1)
    model = tiny_model().eval()
    x = torch.bernoulli(torch.rand(24, 1, 8, 8))
    sweep = chunk_sweep(model, x, 40, [10**6, 48, 24], batch_size=24, rounds=1)
    assert sweep["max_abs_difference_nats"][48] < 1e-4
    assert sweep["max_abs_difference_nats"][24] > 1e-2  # 1-sample chunks of 72 numbers: other draws
    assert set(sweep["seconds_per_1000_images"]) == {10**6, 48, 24}


def test_running_means_weight_by_batch_and_follow_changing_keys() -> None:
    means = RunningMeans()
    cpu = torch.device("cpu")
    means.update({"loss": torch.tensor(1.0), "beta": 0.5}, 2, cpu)
    means.update({"loss": torch.tensor(4.0), "beta": 1.0}, 1, cpu)
    means.update({"loss_e": torch.tensor(3.0)}, 5, cpu)
    assert means.last_values() == {"loss_e": 3.0}
    out = {k: float(v) for k, v in means.means().items()}
    assert out == pytest.approx({"loss": 2.0, "beta": 2.0 / 3.0, "loss_e": 3.0})
    means.reset()
    assert means.means() == {}


def test_train_logs_steps_every_n_and_epoch_means(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("trainer.log_every_n_steps=2", "trainer.limit_train_batches=5", "test=false")
    metrics = train(cfg)
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").read_text().splitlines()))
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss_step")})
    assert steps == [0, 2, 4]
    epoch_rows = [r for r in rows if r.get("train/loss")]
    assert len(epoch_rows) == 1 and math.isfinite(float(epoch_rows[0]["train/elbo"]))
    assert math.isfinite(metrics["val/elbo"])


def test_non_finite_loss_stops_training(make_cfg) -> None:
    datamodule, module = build(make_cfg("test=false"))
    loss = module.objective.loss
    module.objective.loss = lambda model, x: (loss(model, x)[0] * float("nan"), {})
    with pytest.raises(FloatingPointError, match="non-finite training loss by step 0"):
        build_trainer(make_cfg("test=false")).fit(module, datamodule=datamodule)


def test_deferred_non_finite_check_blocks_checkpoints() -> None:
    module = VAEModule(tiny_model(), part("objective", "elbo"), torch.optim.Adam)
    module._all_finite = torch.tensor(False)  # as left on a GPU by a NaN step, not yet read
    with pytest.raises(FloatingPointError):
        module.on_save_checkpoint({})
    module.on_save_checkpoint({})  # reported once


def test_device_batches_cover_each_example_once_and_shard_by_rank() -> None:
    data = InMemoryDataset(torch.arange(10, dtype=torch.uint8).view(10, 1), scale=1.0)
    loader = DeviceBatches(data, batch_size=4, shuffle=True, device="cpu", seed=3)
    first, second = (torch.cat(list(loader)).flatten() for _ in range(2))
    assert sorted(first.tolist()) == list(range(10)) and len(loader) == 3
    assert first.tolist() != second.tolist()  # a new order every epoch
    shards = [torch.cat(list(DeviceBatches(data, 3, True, "cpu", seed=3, rank=r, world=3))) for r in range(3)]
    assert sorted(torch.cat(shards).flatten().tolist()) == list(range(10))


def test_on_device_data_path_trains(make_cfg) -> None:
    cfg = make_cfg("dataset.on_device=true", "test=false")
    datamodule, _ = build(cfg)
    datamodule.setup("fit")
    assert isinstance(datamodule.train_dataloader(), DeviceBatches)
    assert math.isfinite(train(cfg)["val/elbo"])


@pytest.mark.parametrize("net", ["conv", "resnet"])
def test_channels_last_gives_the_same_numbers(net: str) -> None:
    model = tiny_model((3, 16, 16), ("gaussian", {"sigma": "fixed"}), net).eval()
    x = torch.rand(4, 3, 16, 16)
    z = torch.randn(4, 3)
    h, out = model.encoder(x), model.decoder(z)
    model.to(memory_format=torch.channels_last)
    model.channels_last = True
    torch.testing.assert_close(model.encoder(x.contiguous(memory_format=torch.channels_last)), h, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.encode(x).mean, model.posterior(h).mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.decoder(z), out, rtol=1e-4, atol=1e-4)
    assert wants_channels_last("auto", torch.device("cuda"), model)
    assert not wants_channels_last("auto", torch.device("cpu"), model)


def test_configure_runtime_makes_the_cuda_check_cheap_without_a_gpu(monkeypatch) -> None:
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    configure_runtime()
    expected = "1" if torch.cuda.device_count() else "0"
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == expected


def test_bf16_on_a_cpu_without_native_bf16_is_flagged(tmp_path: Path, caplog) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse avx512f avx512bw avx512vl\n")
    cpu = torch.device("cpu")
    assert warn_if_bf16_is_emulated(cpu, "bf16-mixed", cpuinfo)
    assert "emulated" in caplog.text and "trainer=cpu" in caplog.text
    assert not warn_if_bf16_is_emulated(cpu, "32-true", cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert not warn_if_bf16_is_emulated(cpu, "bf16-mixed", cpuinfo)


@pytest.mark.parametrize("override", ["objective=elbo", "objective=soft_intro", "trainer=cpu_bf16"])
def test_benchmark_script_writes_json(tmp_path: Path, override: str) -> None:
    """Also for an objective with its own training step, which the plain loop drives through a plain
    ``StepContext``, and under bf16 autocast, which the plain loop and the vectorised NLL apply as the runner does."""
    from scripts.benchmark import main

    out = tmp_path / "b.json"
    main(
        [
            "dataset=synthetic",
            "dataset.shape=[1,8,8]",
            "likelihood=gaussian",
            override,
            "--steps=2",
            "--warmup=1",
            "--rounds=1",
            "--nll-images=8",
            "--nll-k=4",
            "--nll-loop-images=4",
            f"--out={out}",
        ]
    )
    result = json.loads(out.read_text())
    timing = result["train"]
    plain, runner = timing["plain"]["median_step_s"], timing["runner"]["median_step_s"]
    for side, step in (("plain", plain), ("runner", runner)):
        # one whole iteration of a small MLP: far above the clock's resolution (a timer read twice at one point),
        # far below a stalled or mis-scaled (milliseconds read as seconds) clock
        assert 1e-5 < step < 30, (side, step)
        assert timing[side]["images_per_sec"] == pytest.approx(timing["batch_size"] / step)
    assert timing["runner_over_plain"] == pytest.approx(runner / plain)  # one round: runner over plain, not inverted
    # the runner does the plain loop's work plus Lightning's: about 1 or more, scattered widely either way by two
    # timed steps on a shared machine; a zero, mis-scaled or one-sided clock lands orders of magnitude outside
    assert 0.01 < timing["runner_over_plain"] < 100
    assert result["nll"]["k"] == 4 and result["sampling"]["n"] == 64 and result["peak_memory"]["peak_rss_mib"] > 0
    assert result["nll"]["precision"] == ("bf16-mixed" if override == "trainer=cpu_bf16" else "32-true")


def test_compile_runs_the_encoder_and_decoder_through_torch_compile(make_cfg, monkeypatch) -> None:
    """compile=true must reach the networks the objectives call; compiling the VAE itself (which has no forward)
    would compile nothing. torch.compile is replaced by a pass-through that counts the calls it wraps."""
    calls: dict[str, int] = {}

    def counting_compile(fn, **_: object):
        name = type(fn.__self__).__name__

        def wrapped(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(torch, "compile", counting_compile)
    train(make_cfg("compile=true", "test=false", "trainer.max_epochs=1", "callbacks.image_grids=null"))
    assert calls.get("MLPEncoder", 0) > 1 and calls.get("MLPDecoder", 0) > 1, calls


@pytest.mark.slow
def test_compile_trains_on_cpu_with_inductor(make_cfg) -> None:
    assert math.isfinite(train(make_cfg("compile=true", "test=false"))["val/elbo"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_fast_path_trains_with_data_on_device_and_bf16(make_cfg) -> None:
    L.seed_everything(0)
    # 12 steps: the throughput skips its first 5 (the first 3 also warm the recorded step up)
    metrics = train(
        make_cfg("trainer=gpu", "encoder=conv", "decoder=conv", "test=false", "trainer.limit_train_batches=12")
    )
    assert math.isfinite(metrics["val/elbo"]) and metrics["train/images_per_sec"] > 0
