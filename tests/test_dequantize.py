"""Uniform dequantisation of grey images (``dataset.dequantize``): values, fixed held-out noise, refusals."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from vae_experiments.data import Digits
from vae_experiments.errors import ConfigError


def levels_of(x: torch.Tensor, levels: int) -> torch.Tensor:
    return torch.floor(x * levels).to(torch.uint8)


def test_each_value_stays_in_its_own_bin_and_training_reads_draw_fresh_noise() -> None:
    plain_train, _, plain_test = Digits(binarize="none").splits()
    train, _, test = Digits(binarize="none", dequantize=True).splits()
    index = torch.arange(64)
    first, second = train.take(index), train.take(index)
    grey = plain_train.take(index) * 16  # the integer levels 0..16
    assert torch.equal(levels_of(first, 17).float(), grey.round())
    assert first.min() >= 0 and first.max() < 1
    assert not torch.equal(first, second)
    assert torch.equal(levels_of(second, 17).float(), grey.round())
    # held-out images: the bin of each level, one fixed draw
    assert torch.equal(
        levels_of(test.take(torch.arange(250)), 17).float(), (plain_test.take(torch.arange(250)) * 16).round()
    )


def test_held_out_noise_is_the_seeded_draw() -> None:
    images = torch.from_numpy(load_digits().images).to(torch.uint8).unsqueeze(1)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    test_images = images[order[:250]]
    expected = (test_images.float() + torch.rand(test_images.shape, generator=torch.Generator().manual_seed(3))) / 17
    _, _, test = Digits(binarize="none", dequantize=True, seed=0).splits()
    assert torch.equal(test.take(torch.arange(250)), expected)
    _, _, again = Digits(binarize="none", dequantize=True, seed=0).splits()
    assert torch.equal(again.take(torch.arange(250)), expected)


def test_dequantised_data_are_continuous_and_binarised_data_cannot_be_dequantised() -> None:
    assert Digits(binarize="none", dequantize=True).levels is None
    assert Digits(binarize="none").levels == 17
    with pytest.raises(ConfigError, match=r"dataset\.binarize=none or dataset\.dequantize=false"):
        Digits(binarize="dynamic", dequantize=True)
