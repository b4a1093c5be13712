"""Process-wide settings that make every step cheaper; called once by the entry points before training."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


def configure_runtime() -> None:
    """Make ``torch.cuda.is_available()`` cheap on machines without an NVIDIA GPU.

    Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (to keep forked workers usable on GPU machines).
    With a CUDA build of torch and no GPU, every availability check then re-opens the NVML library and fails, and
    ``torch.optim`` runs that check in every ``step()``, a visible share of a small MLP's step (BENCHMARKS.md, Digits).
    Without a GPU there is no CUDA context a fork could inherit, so the plain runtime check is as safe and far cheaper.
    """
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and torch.cuda.device_count() == 0:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


def wants_channels_last(setting: bool | str, device: torch.device, model: nn.Module) -> bool:
    """``auto``: channels-last (NHWC) on a CUDA device for a model with 2-D convolutions, where cuDNN's NHWC
    kernels (tensor cores under bf16) are the fast ones; on the CPU, NCHW stays."""
    if setting == "auto":
        return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    if not isinstance(setting, bool):
        raise ValueError(f"channels_last must be true, false or auto, got {setting!r}")
    return setting


def warn_if_bf16_is_emulated(device: torch.device, precision: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """bf16 autocast on a CPU without AVX512-BF16 or AMX runs emulated, slower than fp32: say so (True) before
    training. Linux only (elsewhere nothing is known and nothing is said)."""
    if device.type != "cpu" or not precision.startswith("bf16") or not cpuinfo.is_file():
        return False
    flags = set(cpuinfo.read_text().split())
    if flags & {"avx512_bf16", "amx_bf16"}:
        return False
    log.warning(
        "trainer.precision=%s on a CPU without avx512_bf16 or amx_bf16: bf16 is emulated and slower than fp32 here; "
        "use trainer=cpu",
        precision,
    )
    return True
