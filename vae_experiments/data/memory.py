"""In-memory splits: one tensor per split, batches by one vectorised index (no per-item Python transform)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vae_experiments.errors import ConfigError


class InMemoryDataset(Dataset[Tensor]):
    """A split held as ONE tensor ``data`` of shape ``(N, *data_shape)`` (uint8 images or float toy points).

    A read returns ``data[indices].float() / scale``. ``resample=True`` re-draws ``x ~ Bernoulli(x)`` on every
    read (dynamic binarisation of a training split); ``dequantize=True`` returns ``(data + u) / scale`` with a fresh
    ``u ~ U[0, 1)`` per value on every read (uniform dequantisation of a training split); ``hflip=True`` mirrors each
    image left-right with probability 1/2. All three use the global torch generator, so ``seed_everything`` and the
    DataLoader's per-worker seeds govern them.

    It stays a map-style ``Dataset`` (``__len__``/``__getitem__``), so a ``DataLoader`` with any sampler,
    including the ``DistributedSampler`` Lightning injects, works. The DataLoader's fetcher calls
    ``__getitems__`` with the whole batch of indices; use ``collate_batch`` as its ``collate_fn``.
    """

    def __init__(
        self, data: Tensor, scale: float = 1.0, resample: bool = False, hflip: bool = False, dequantize: bool = False
    ) -> None:
        self.data = data
        self.scale = float(scale)
        self.resample = resample
        self.hflip = hflip
        self.dequantize = dequantize

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> Tensor:
        return self.take(torch.as_tensor(indices, dtype=torch.long, device=self.data.device))

    def take(self, index: Tensor) -> Tensor:
        """The float batch at ``index`` (a long tensor on the data's device), transformed where the data lives."""
        x = self.data.index_select(0, index)
        if self.dequantize:
            x = x.to(torch.float32).add_(torch.rand(x.shape, device=x.device))
        # uint8 * float scalar promotes to float32 in one pass; .to() is then a no-op
        x = (x * (1.0 / self.scale) if self.scale != 1.0 else x).to(torch.float32)
        if self.resample:
            x = torch.bernoulli(x)
        if self.hflip:
            flip = (torch.rand(x.shape[0], device=x.device) < 0.5).view(-1, *([1] * (x.dim() - 1)))
            x = torch.where(flip, x.flip(-1), x)
        return x

    def to(self, device: torch.device | str) -> InMemoryDataset:
        """The same split with its tensor on ``device`` (moved once; reads then never leave the device)."""
        return InMemoryDataset(self.data.to(device), self.scale, self.resample, self.hflip, self.dequantize)


def collate_batch(batch: Tensor) -> Tensor:
    """The DataLoader ``collate_fn`` for ``InMemoryDataset``: the batch already is one tensor."""
    return batch


def binarize_once(data: Tensor, scale: float, seed: int) -> Tensor:
    """One Bernoulli draw per value with probability ``data / scale`` from a generator seeded with ``seed``.

    Returns uint8 zeros and ones of the shape of ``data``: the same bits on every call with the same seed.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(data.to(torch.float32) / scale, generator=generator).to(torch.uint8)


def dequantize_once(data: Tensor, levels: int, seed: int) -> Tensor:
    """``(data + u) / levels`` with ``u ~ U[0, 1)`` per value from a generator seeded with ``seed``: float32 values in
    [0, 1), the same on every call with the same seed (a held-out split's fixed dequantisation)."""
    generator = torch.Generator().manual_seed(seed)
    return (data.to(torch.float32) + torch.rand(data.shape, generator=generator)) / levels


BINARIZE = ("none", "static", "dynamic")


def binarized_levels(binarize: str, levels: int, dequantize: bool = False) -> int | None:
    """Values per pixel of the batches: 2 once binarised, ``None`` once dequantised (continuous values), else the
    images' own ``levels``."""
    if dequantize:
        return None
    return 2 if binarize != "none" else levels


def split_images(
    pool: Tensor,
    test: Tensor | None,
    levels: int,
    *,
    seed: int,
    val_size: int,
    test_size: int = 0,
    train_subset: int | None = None,
    binarize: str = "none",
    hflip: bool = False,
    dequantize: bool = False,
) -> tuple[InMemoryDataset, InMemoryDataset, InMemoryDataset]:
    """Train / validation / test splits of uint8 images (values 0..``levels`` - 1), read as float32 in [0, 1].

    One permutation of ``pool`` drawn with ``seed`` gives, in order: the ``test_size`` test images when the set has
    no official ``test`` split (``test=None``), then ``val_size`` validation images, then the training images (the
    first ``train_subset`` of them when set). Binarisation: ``static`` draws one Bernoulli(value / (levels - 1)) per
    pixel of the pool with a generator seeded with ``seed`` (of an official test split with ``seed + 1``), the same
    bits for every split and every epoch; ``dynamic`` (Burda et al.) keeps the training images grey and re-draws them
    on every read, while validation and test images get the ``static`` bits, so evaluation is deterministic.
    ``dequantize`` (with ``binarize='none'`` only) reads value k as (k + u) / ``levels``, u ~ U[0, 1) (Theis et al.
    2016, Eq. 3): a fresh u on every read of a training image, one fixed draw per value of the validation and test
    images (generators seeded with ``seed + 2`` and ``seed + 3``), so evaluation is deterministic. A density p on
    [0, 1]^D then bounds the probability of the 8-bit image: -log P(k) <= E_u[-log p((k + u) / L)] + D log L.
    ``hflip`` mirrors training images at random.
    """
    held_out = val_size + (test_size if test is None else 0)
    if held_out >= pool.shape[0]:
        raise ConfigError(
            f"dataset.val_size={val_size}"
            + (f" and dataset.test_size={test_size}" if test is None else "")
            + f" hold out {held_out} of the {pool.shape[0]} images, leaving none for training: lower them"
        )
    top = float(levels - 1)
    bits_pool = binarize_once(pool, top, seed) if binarize != "none" else pool
    order = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(seed))
    if test is None:
        test, order = bits_pool[order[:test_size]], order[test_size:]
    elif binarize != "none":
        test = binarize_once(test, top, seed + 1)
    val_idx, train_idx = order[:val_size], order[val_size:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    if dequantize:
        train = InMemoryDataset(pool[train_idx], scale=float(levels), hflip=hflip, dequantize=True)
        val = InMemoryDataset(dequantize_once(pool[val_idx], levels, seed + 2))
        return train, val, InMemoryDataset(dequantize_once(test, levels, seed + 3))
    eval_scale = 1.0 if binarize != "none" else top
    if binarize == "dynamic":
        train = InMemoryDataset(pool[train_idx], scale=top, resample=True, hflip=hflip)
    else:
        train = InMemoryDataset(bits_pool[train_idx], scale=eval_scale, hflip=hflip)
    return train, InMemoryDataset(bits_pool[val_idx], scale=eval_scale), InMemoryDataset(test, scale=eval_scale)
