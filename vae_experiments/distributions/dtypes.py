"""The dtype rule of every density: compute in at least float32, and never below the model's dtype.

Under autocast (``trainer=gpu``, ``trainer=cpu_bf16``) the networks' outputs come in bf16 or fp16, too coarse for
log-densities summed over thousands of values: they are promoted to float32. A float64 model (``model.double()``)
keeps float64 throughout.
"""

from __future__ import annotations

import torch
from torch import Tensor


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in ``torch.promote_types(t.dtype, torch.float32)``: bf16 / fp16 -> float32, float32 and float64 kept."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
