"""The options every grey image set held in memory shares: binarisation, a training subset, the split seed, flips."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from vae_experiments.data.datamodule import Splits, require_choice
from vae_experiments.data.memory import BINARIZE, binarized_levels, split_images
from vae_experiments.errors import ConfigError


@dataclass(kw_only=True)
class GreyImages:
    """A mixin of the grey image sources (digits, MNIST, Fashion-MNIST, Omniglot). ``binarize``: ``none``,
    ``static`` or ``dynamic`` (see ``memory.split_images``); ``dequantize``: grey level k read as (k + u) / values,
    u ~ U[0, 1) (for continuous densities; ``binarize=none`` only, see ``memory.split_images``); ``train_subset``: the
    first images of the shuffled training split; ``seed`` fixes the held-out splits, the subset, the binarisation and
    the held-out dequantisation noise; ``hflip`` mirrors training images at random. ``values``: the grey levels of the
    files (``levels`` is 2 once binarised, ``None`` once dequantised)."""

    values: ClassVar[int]

    binarize: str = "none"
    dequantize: bool = False
    train_subset: int | None = None
    seed: int = 0
    hflip: bool = False

    def __post_init__(self) -> None:
        require_choice("binarize", self.binarize, BINARIZE)
        if self.dequantize and self.binarize != "none":
            raise ConfigError(
                f"dataset.dequantize=true adds noise to grey levels, but dataset.binarize={self.binarize}: "
                "set dataset.binarize=none or dataset.dequantize=false"
            )

    @property
    def levels(self) -> int | None:
        return binarized_levels(self.binarize, self.values, self.dequantize)

    def split(self, pool: Tensor, test: Tensor | None, val_size: int, test_size: int = 0) -> Splits:
        """``memory.split_images`` with these options: ``test_size`` images of ``pool`` held out when ``test`` is
        ``None``, then ``val_size``, the rest for training."""
        return split_images(
            pool,
            test,
            self.values,
            seed=self.seed,
            val_size=val_size,
            test_size=test_size,
            train_subset=self.train_subset,
            binarize=self.binarize,
            hflip=self.hflip,
            dequantize=self.dequantize,
        )
