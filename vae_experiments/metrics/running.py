"""Batch-weighted running means of per-step training scalars, accumulated without waiting for the device."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


class RunningMeans:
    """Sums ``value * weight`` per key where the values live: one ``stack`` and one add per step, no host sync.

    Tensors on ``device`` are stacked into one vector; anything else (Python numbers, schedule values held as CPU
    tensors while training on a GPU) is summed as a Python float. The key set may change between steps (an
    objective's warm-up phase logs other keys); each key's mean uses the weights of the steps that logged it.
    """

    # Not torchmetrics' MeanMetric: it reduces a tensor to one number, so it takes one metric per key: 70 operators
    # per step for 10 keys against 3 here, 6.5x the host time (BENCHMARKS.md, "Library replacements"). Across ranks,
    # Lightning's ``self.log(sync_dist=True)`` averages the ranks' epoch means: MeanMetric's global weighted mean, as
    # Lightning's distributed sampler gives every rank as many examples.

    def __init__(self) -> None:
        self._vectors: dict[tuple[str, ...], list[Tensor | float]] = {}
        self._floats: dict[str, list[float]] = {}
        self._last: tuple[tuple[str, ...], Tensor | None, dict[str, float]] = ((), None, {})

    def update(self, logs: Mapping[str, Tensor | float], weight: float, device: torch.device) -> None:
        on_device = [k for k, v in logs.items() if isinstance(v, Tensor) and v.device == device]
        if on_device:
            vector = torch.stack([logs[k].detach().float().reshape(()) for k in on_device])
            acc = self._vectors.get(tuple(on_device))
            if acc is None:
                self._vectors[tuple(on_device)] = [vector * weight, weight]
            else:
                acc[0] = acc[0] + vector * weight
                acc[1] += weight
        numbers = {k: float(v) for k, v in logs.items() if k not in on_device}  # CPU values: no device sync
        for key, number in numbers.items():
            acc_f = self._floats.setdefault(key, [0.0, 0.0])
            acc_f[0] += number * weight
            acc_f[1] += weight
        self._last = (tuple(on_device), vector if on_device else None, numbers)

    def last_values(self) -> dict[str, float]:
        """The latest step's values as floats (one host sync for all the device values)."""
        keys, vector, numbers = self._last
        out = dict(zip(keys, vector.tolist(), strict=True)) if vector is not None else {}
        out.update(numbers)
        return out

    def means(self) -> dict[str, Tensor | float]:
        """Each key's weighted mean since the last ``reset`` (device tensors stay on the device)."""
        sums: dict[str, Tensor | float] = {}
        weights: dict[str, float] = {}
        for keys, (vector, weight) in self._vectors.items():
            for key, value in zip(keys, vector.unbind(0), strict=True):
                sums[key] = sums.get(key, 0.0) + value
                weights[key] = weights.get(key, 0.0) + weight
        for key, (total, weight) in self._floats.items():
            sums[key] = sums.get(key, 0.0) + total
            weights[key] = weights.get(key, 0.0) + weight
        return {k: v / weights[k] for k, v in sums.items() if weights[k] > 0}

    def reset(self) -> None:
        self._vectors.clear()
        self._floats.clear()
        self._last = ((), None, {})
