"""Callbacks: image grids, throughput, metrics.json, RNG state for exact resume."""
