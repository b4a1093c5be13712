"""Speed measurements for ``scripts/benchmark.py``: the runner against a plain PyTorch loop, the NLL, sampling."""
