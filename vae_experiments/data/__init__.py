"""Data: one DataModule (``VAEDataModule``), the data-set sources, in-memory splits and the 2-D toys."""

from vae_experiments.data.datamodule import VAEDataModule

__all__ = ["VAEDataModule"]
