"""Fréchet Inception Distance with its protocol attached, and reference statistics cached on disk.

    FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

between Gaussians fitted (mean, unbiased covariance) to the pool3 features of generated and reference
images, both clamped to [0, 1] and quantised to 8 bit first (as PNG files are; Soft-IntroVAE does the same).

torchmetrics' ``FrechetInceptionDistance`` could wrap :class:`FIDInception` as its ``feature``, but is not
used: its reference statistics are private metric states (no public save/load for the on-disk cache), and the
runner calls FID once per evaluation, not step-wise; what remains (below) is small and tested against scipy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import linalg
from torch import Tensor, nn

from vae_experiments.metrics.inception import INCEPTION_NAME, RESIZE, FIDInception, cache_dir, load_inception

PREPROCESS = "clamped to [0, 1], quantised to 8 bit, grey repeated to RGB"


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """``||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})`` in float64.

    ``Tr((S1 S2)^{1/2})`` is the nuclear norm (sum of singular values) of ``S1^{1/2} S2^{1/2}``, each square
    root from a symmetric eigen-decomposition (round-off negatives clipped to 0). Unlike ``sqrtm(S1 @ S2)``
    this has no complex parts, needs no offset for singular covariances (fewer images than 2048), and the
    null space of a rank-deficient covariance adds ~eps, not ~sqrt(eps), per dimension.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    tr_covmean = linalg.svdvals(_psd_sqrt(s1) @ _psd_sqrt(s2)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root ``V diag(sqrt(max(w, 0))) V^T`` of a covariance ``V diag(w) V^T``."""
    w, v = linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


@dataclass(frozen=True)
class FeatureStats:
    """Mean ``mu (D,)``, unbiased covariance ``sigma (D, D)`` and count ``n`` of a feature set (float64)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    def save(self, path: Path) -> None:
        """Write atomically (a concurrent reader never sees half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, mu=self.mu, sigma=self.sigma, n=self.n)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> FeatureStats:
        with np.load(path) as f:
            return cls(mu=f["mu"], sigma=f["sigma"], n=int(f["n"]))


class RunningStats:
    """Streaming mean and covariance in float64, merging each batch's centred statistics (Chan et al.):

    ``delta = m_b - m``, ``m <- m + delta b / (n + b)``, ``M2 <- M2 + M2_b + delta delta^T n b / (n + b)``,
    ``sigma = M2 / (n - 1)``. Exact like a two-pass computation, without raw ``sum x x^T``'s cancellation.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, features: Tensor) -> None:
        """Add a batch ``(B, D)``."""
        f = features.to(self.mean.device, torch.float64)
        b = f.shape[0]
        if b == 0:
            return
        batch_mean = f.mean(0)
        centred = f - batch_mean
        delta = batch_mean - self.mean
        total = self.n + b
        self.mean += delta * (b / total)
        self.m2 += centred.T @ centred + torch.outer(delta, delta) * (self.n * b / total)
        self.n = total

    def stats(self) -> FeatureStats:
        if self.n < 2:
            raise ValueError(f"FID needs at least 2 images per set, got {self.n}")
        return FeatureStats(self.mean.cpu().numpy(), (self.m2 / (self.n - 1)).cpu().numpy(), self.n)


class Progress(Protocol):
    """Where a stopped FID computation continues (``callbacks.resumable_test.FIDProgress``): ``restore`` puts a
    feature set's saved statistics into ``running`` (and the random state after its last saved batch, if the set is
    unfinished) and returns how many images they hold; ``update`` is told of every batch added."""

    def restore(self, name: str, running: RunningStats) -> int: ...

    def update(self, name: str, running: RunningStats, finished: bool) -> None: ...


@dataclass(frozen=True)
class FIDResult:
    """An FID value with the protocol to write beside it (``dataclasses.asdict`` gives a flat dict)."""

    value: float
    n_generated: int
    n_reference: int
    reference: str
    model_mode: str
    reference_cached: bool = False
    inception: str = INCEPTION_NAME
    resize: str = RESIZE
    preprocess: str = PREPROCESS


def quantise(images: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to the 256 levels of an 8-bit image: ``round(255 x) / 255``."""
    return torch.round(images.clamp(0, 1) * 255) / 255


def _images(batch: Tensor | tuple | list) -> Tensor:
    """A DataLoader batch may be ``x`` or ``(x, y, ...)``."""
    return batch[0] if isinstance(batch, tuple | list) else batch


def feature_stats(
    batches: Iterable[Tensor],
    n: int,
    inception: FIDInception | nn.Module,
    running: RunningStats | None = None,
    progress: Progress | None = None,
    name: str = "",
) -> FeatureStats:
    """Statistics of the features of the first ``n`` images of ``batches`` (fewer if they run out), added to
    ``running`` (a new one by default; ``progress`` is told of each batch as set ``name``)."""
    running = running or RunningStats(inception.out_features, next(inception.parameters()).device)
    with torch.no_grad():
        for batch in batches if running.n < n else ():
            x = _images(batch)[: n - running.n]
            running.update(inception(quantise(x.to(running.mean.device))))
            if progress is not None:
                progress.update(name, running, finished=running.n >= n)
            if running.n >= n:
                break
    return running.stats()


def stats_path(name: str, split: str, n: int, image_shape: tuple[int, ...]) -> Path:
    """``<cache>/fid_stats/<name>-<split>-n<n>-<C>x<H>x<W>.npz``; ``n`` is the requested count."""
    shape = "x".join(str(s) for s in image_shape)
    return cache_dir() / "fid_stats" / f"{name}-{split}-n{n}-{shape}.npz"


def _generated(
    generate: Callable[[int], Tensor], n: int, batch_size: int, shapes: list[tuple[int, ...]], start: int = 0
) -> Iterator[Tensor]:
    """Images ``start`` to ``n`` from ``generate``, in the batches of ``batch_size`` that started at 0; each image
    shape is added to ``shapes``."""
    for first in range(start, n, batch_size):
        count = min(batch_size, n - first)
        x = generate(count)
        if x.shape[0] != count:
            raise ValueError(f"generate({count}) returned {x.shape[0]} images")
        shapes.append(tuple(x.shape[1:]))
        yield x


def _skipped(batches: Iterable[Tensor | tuple | list], skip: int) -> Iterator[Tensor]:
    """The images of ``batches`` after the first ``skip`` (read, not computed on)."""
    for batch in batches:
        x = _images(batch)
        if x.shape[0] > skip:
            yield x[skip:]
        skip = max(0, skip - x.shape[0])


def compute_fid(
    generate: Callable[[int], Tensor],
    reference: Iterable[Tensor] | FeatureStats,
    n: int,
    batch_size: int = 50,
    *,
    model_mode: str,
    reference_split: str = "train",
    reference_name: str | None = None,
    n_reference: int | None = None,
    image_shape: tuple[int, ...] | None = None,
    inception: FIDInception | nn.Module | None = None,
    weights: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> FIDResult:
    """FID between ``n`` images from ``generate(k) -> (k, C, H, W)`` in [0, 1] and a reference set.

    ``reference``: batches of images (or ``(x, y)`` DataLoader batches), of which the first ``n_reference``
    (default ``n``) are used, or precomputed :class:`FeatureStats`. With ``reference_name`` (the data set's
    name) the reference statistics are cached under :func:`stats_path` ``(reference_name, reference_split,
    n_reference, image_shape)`` and a later call reads them without touching ``reference``; ``image_shape``
    defaults to the generated images' shape. ``model_mode`` ('eval' or 'train') is the generating model's
    mode, recorded only.
    The Inception comes from ``inception`` (any module with ``out_features``: tests pass a cheap stand-in) or
    :func:`load_inception` ``(weights)``.
    With ``progress`` each feature set ("generated", then "reference") continues after the images a stopped call
    saved, the generated ones from the random state after them: the value is the uninterrupted call's, bit for bit,
    provided ``generate`` draws only from the global generators.
    """
    if model_mode not in ("eval", "train"):
        raise ValueError(f"model_mode must be 'eval' or 'train', got {model_mode!r}")
    if progress is not None and image_shape is None:
        raise ValueError("a resumable FID needs image_shape (the generated images' shape may all be restored)")
    inception = inception if inception is not None else load_inception(weights)
    n_reference = n if n_reference is None else n_reference
    device = next(inception.parameters()).device

    def stats(name: str, batches_after: Callable[[int], Iterable[Tensor]], count: int) -> FeatureStats:
        running = RunningStats(inception.out_features, device)
        done = progress.restore(name, running) if progress is not None else 0
        return feature_stats(batches_after(done), count, inception, running, progress, name)

    shapes: list[tuple[int, ...]] = []
    fake = stats("generated", lambda done: _generated(generate, n, batch_size, shapes, done), n)
    cached = False
    if isinstance(reference, FeatureStats):
        real = reference
    elif reference_name is None:
        real = stats("reference", lambda done: _skipped(reference, done), n_reference)
    else:
        key_shape = tuple(image_shape) if image_shape is not None else shapes[0]
        path = stats_path(reference_name, reference_split, n_reference, key_shape)
        cached = path.is_file()
        if cached:
            real = FeatureStats.load(path)
        else:
            real = stats("reference", lambda done: _skipped(_checked(reference, key_shape), done), n_reference)
            real.save(path)
    value = frechet_distance(fake.mu, fake.sigma, real.mu, real.sigma)
    return FIDResult(value, fake.n, real.n, reference_split, model_mode, reference_cached=cached)


def _checked(batches: Iterable[Tensor], shape: tuple[int, ...]) -> Iterator[Tensor]:
    """Refuse reference images whose shape differs from the cache key's (their stats would be misfiled)."""
    for batch in batches:
        x = _images(batch)
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"reference images are {tuple(x.shape[1:])}, the stats cache key says {shape}")
        yield x
