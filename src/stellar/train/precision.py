"""Which precision a training step runs in: ``precision=auto|bf16|fp32``."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from stellar.runtime import autocast_dtype


def cpu_bf16_feature() -> str | None:
    """The instruction set that gives this CPU native bf16 matmuls, or None.

    x86: AMX tiles or AVX512-BF16 (what oneDNN's bf16 kernels use); Arm: the ``bf16`` feature
    (BFMMLA). Without one of them bf16 runs emulated, slower than fp32.
    """
    cpu = getattr(torch, "cpu", None)
    for name, probe in (
        ("AMX", "_is_amx_tile_supported"),
        ("AVX512-BF16", "_is_avx512_bf16_supported"),
    ):
        check = getattr(cpu, probe, None)
        if check is not None and check():
            return name
    if platform.machine().lower() in ("aarch64", "arm64"):
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
        if any(line.startswith("Features") and " bf16" in line for line in flags.splitlines()):
            return "Arm BF16"
    return None


def training_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The training step's autocast dtype (None: plain fp32) for ``precision``, and why.

    Explicit settings mean what :func:`stellar.runtime.autocast_dtype` says. ``auto`` takes
    bf16 wherever the device computes it natively: a CUDA GPU with bf16, and also a CPU with
    AMX / AVX512-BF16 / Arm BF16 (training only: inference keeps the runtime's default).
    """
    dtype = autocast_dtype(precision, device)  # validates the name
    if precision != "auto":
        return dtype, f"{'bf16 autocast' if dtype else 'fp32'} (precision={precision})"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16 autocast (precision=auto: the GPU supports bf16)"
        return None, "fp32 (precision=auto: this GPU has no bf16)"
    if device.type == "cpu":
        feature = cpu_bf16_feature()
        if feature is not None:
            return torch.bfloat16, f"bf16 autocast (precision=auto: the CPU has {feature})"
        return None, "fp32 (precision=auto: this CPU has no native bf16)"
    return dtype, f"{'bf16 autocast' if dtype else 'fp32'} (precision=auto on {device.type})"
