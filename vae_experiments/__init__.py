"""vae-experiments: a Hydra-configured experiment runner for variational autoencoders."""

__version__ = "0.1.0"
