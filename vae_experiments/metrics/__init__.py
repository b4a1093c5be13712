"""Evaluation metrics: importance-sampled NLL, bits/dim, posterior-collapse diagnostics, FID."""
