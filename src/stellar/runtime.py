"""Where code runs: the device, the autocast precision and the torchrun process group.

Every command and the trainer go through these three helpers, so "cuda when available",
"bf16 autocast where the device computes bf16 natively, fp32 elsewhere" and "join the group
torchrun describes" are decided in one place.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import functools
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from stellar.errors import UsageError

__all__ = [
    "PRECISIONS",
    "DistInfo",
    "autocast",
    "add_precision_argument",
    "autocast_dtype",
    "cpu_bf16_feature",
    "encoding_dtype",
    "pick_device",
    "precision",
    "precision_choice",
    "rank_info",
    "setup",
    "teardown",
]

logger = logging.getLogger(__name__)

# "auto" is bf16 where the device computes it natively (a bf16 GPU; a CPU with AMX,
# AVX512-BF16 or Arm BF16) and no autocast (fp32) elsewhere.
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "bfloat16", "fp32", "float32")


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and device of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes shared outputs (checkpoints, indexes)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def pick_device(spec: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """``spec`` as a device, or by default CUDA device ``local_rank`` when CUDA exists, else CPU.

    Raises:
        UsageError: ``spec`` names no device torch knows (e.g. ``--device gpu``).
    """
    if spec is None:
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as err:
        raise UsageError(
            f"expected a device such as cpu, cuda or cuda:1, got {str(spec)!r} ({err})"
        ) from None
    if device.type == "cuda" and device.index is None:  # under torchrun: this rank's GPU
        device = torch.device("cuda", local_rank)
    return device


@functools.cache  # autocast() asks once per batch; the CPU does not change
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


def _cuda_native_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def precision_choice(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype of a precision setting (None: no autocast, fp32) and why, for logs.

    Raises:
        ValueError: ``precision`` is not one of :data:`PRECISIONS`.
    """
    if precision in ("bf16", "bfloat16"):
        return torch.bfloat16, f"bf16 autocast (precision={precision})"
    if precision in ("fp32", "float32"):
        return None, f"fp32 (precision={precision})"
    if precision != "auto":
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if device.type == "cuda":
        # Emulated bf16 (pre-Ampere GPUs) is slower than fp32: only native support counts.
        if torch.cuda.is_available() and not _cuda_native_bf16(device):
            return None, "fp32 (precision=auto: this GPU has no native bf16)"
        return torch.bfloat16, "bf16 autocast (precision=auto: the GPU supports bf16)"
    if device.type == "cpu" and (feature := cpu_bf16_feature()) is not None:
        return torch.bfloat16, f"bf16 autocast (precision=auto: the CPU has {feature})"
    return None, f"fp32 (precision=auto: no native bf16 on this {device.type})"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting (None: no autocast, fp32); see
    :func:`precision_choice`."""
    return precision_choice(precision, device)[0]


# What "auto" in autocast() resolves to here: a command's --precision (see precision()).
_PRECISION: contextvars.ContextVar[str] = contextvars.ContextVar("precision", default="auto")


@contextlib.contextmanager
def precision(name: str):
    """Within the block, :func:`autocast` with ``dtype="auto"`` (every encoding pass) uses
    the precision ``name`` (``auto``, ``bf16``, ``fp32``), e.g. ``precision("fp32")`` for
    exact fp32 features; the commands' ``--precision`` sets it."""
    precision_choice(name, torch.device("cpu"))  # validates the name
    token = _PRECISION.set(name)
    try:
        yield
    finally:
        _PRECISION.reset(token)


def encoding_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype ``autocast(device, precision)`` takes here (None: fp32): ``auto`` means the
    enclosing :func:`precision` block's setting, if any."""
    return autocast_dtype(_PRECISION.get() if precision == "auto" else precision, device)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision`` of the commands that encode images."""
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="encoding autocast; auto: bf16 where the device computes it natively, else fp32",
    )


def autocast(
    device: torch.device, dtype: torch.dtype | str | None = "auto"
) -> contextlib.AbstractContextManager:
    """The autocast context for ``device``: ``dtype`` a dtype, None (off) or a precision name
    (``auto``: the precision the enclosing :func:`precision` block chose, else auto)."""
    if isinstance(dtype, str):
        dtype = encoding_dtype(device, dtype)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def rank_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment ((0, 1, 0) without it)."""
    env = os.environ
    return (
        int(env.get("RANK", "0")),
        int(env.get("WORLD_SIZE", "1")),
        int(env.get("LOCAL_RANK", "0")),
    )


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Join the torchrun process group when launched by torchrun (NCCL on GPU, gloo on CPU).

    Args:
        device: the device to use (default: CUDA device ``LOCAL_RANK`` when CUDA exists).

    Returns:
        This process's :class:`DistInfo`; a CUDA device is made the current one.
    """
    rank, world, local = rank_info()
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        logger.info("rank %d/%d on %s", rank, world, dev)
    return DistInfo(rank, world, local, dev)


def teardown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
