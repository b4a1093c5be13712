"""Callbacks: image grids, throughput, the last checkpoint, the last validation metrics, CSV rows in step with the
checkpoints, RNG state for exact resume, a test loop that continues after its last batch."""
