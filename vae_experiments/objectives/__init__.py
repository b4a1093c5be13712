"""Objectives own the training step: ELBO family, IWAE, constrained KL, Soft-IntroVAE."""
