"""Sources read from files under ``root``: where they live, the one-line message when they are missing, download."""

from __future__ import annotations

import os
import pickle
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

from vae_experiments.data.datamodule import Source
from vae_experiments.errors import ConfigError

T = TypeVar("T")


def default_data_dir() -> Path:
    """Where data sets live unless ``paths.data_dir`` says otherwise: ``$VAE_DATA_DIR``, else
    ``$XDG_CACHE_HOME/vae_experiments/data``, else ``~/.cache/vae_experiments/data`` (the XDG base directory rule;
    ``conf/paths/default.yaml`` spells the same rule with ``oc.env``). Never the current folder."""
    if os.environ.get("VAE_DATA_DIR"):
        return Path(os.environ["VAE_DATA_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")  # empty counts as unset (XDG)
    return Path(cache) / "vae_experiments" / "data"


@dataclass(kw_only=True)
class OnDisk(Source):
    """A source whose files lie in ``root/folder``; ``download=true`` lets ``prepare_data`` fetch what is missing.

    ``title``, ``folder``, ``required`` (the names that must exist there) and ``what`` (those files in words) are
    facts of each subclass, not options.
    """

    title: ClassVar[str]
    folder: ClassVar[str]
    required: ClassVar[tuple[str, ...]]
    what: ClassVar[str]

    root: str | Path = field(default_factory=default_data_dir)
    download: bool = False

    @property
    def path(self) -> Path:
        return Path(self.root) / self.folder

    def present(self) -> bool:
        """Whether the files are there (checks names only: fast)."""
        return all((self.path / name).exists() for name in self.required)

    def missing_message(self) -> str:
        return f"{self.title} not found in {self.path}: put {self.what} there or set dataset.download=true"

    def require_files(self) -> None:
        if not self.download and not self.present():
            raise ConfigError(self.missing_message())

    def download_files(self) -> None:
        if self.download and not self.present():
            try:
                self.fetch()
            except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
                raise ConfigError(
                    f"dataset.download=true could not fetch {self.title} ({type(err).__name__}: {err}): check the "
                    f"network, or put {self.what} in {self.path} and set dataset.download=false"
                ) from None
        if not self.present():
            raise ConfigError(self.missing_message())

    @abstractmethod
    def fetch(self) -> None:
        """Download the files into ``root`` with torchvision (needs a network)."""

    def open(self, make: Callable[[], T]) -> T:
        """Build a torchvision data set; its 'not found or corrupted' or bad-file error is a one-line ConfigError."""
        try:
            return make()
        except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as err:
            raise ConfigError(
                f"{self.title} in {self.path} is incomplete or corrupted (torchvision: {err}): "
                f"put {self.what} there or set dataset.download=true"
            ) from err
