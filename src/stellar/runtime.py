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
from dataclasses import dataclass

import torch
import torch.distributed as dist

from stellar.errors import UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and device of this process."""

    rank: int = 0
    world_size: int = 1
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
    """``spec`` as a device (a UsageError if torch knows no such device, e.g. ``gpu``), or by
    default CUDA device ``local_rank`` when CUDA exists, else CPU."""
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
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    if device.type != "cpu" and not getattr(backend, "is_available", bool)():
        raise UsageError(f"device {spec!r}: this torch build or machine has no {device.type}")
    if device.type == "cuda" and device.index is None:  # under torchrun: this rank's GPU
        device = torch.device("cuda", local_rank)
    return device


@functools.cache  # autocast() asks once per batch; the CPU does not change
def cpu_bf16_feature() -> str | None:
    """The x86 feature that gives this CPU native bf16 matmuls (AMX tiles or AVX512-BF16, what
    oneDNN's bf16 kernels use), or None: without one bf16 runs emulated, slower than fp32."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    return "AVX512-BF16" if torch.cpu._is_avx512_bf16_supported() else None


def _cuda_native_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def precision_choice(precision: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype of a precision setting (None: no autocast, fp32) and why, for logs."""
    if precision == "bf16":
        return torch.bfloat16, "bf16 autocast (precision=bf16)"
    if precision == "fp32":
        return None, "fp32 (precision=fp32)"
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


def encoding_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype ``autocast(device)`` takes here (None: fp32): the enclosing :func:`precision`
    block's setting, else auto."""
    return precision_choice(_PRECISION.get(), device)[0]


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision`` of the commands that encode images."""
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="encoding autocast; auto: bf16 where the device computes it natively, else fp32",
    )


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for ``device``: the precision the enclosing :func:`precision` block
    chose, else auto."""
    dtype = encoding_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def setup(device: str | torch.device | None = None) -> DistInfo:
    """This process's :class:`DistInfo`, after joining the process group torchrun describes
    (NCCL on GPU, gloo on CPU); ``device`` defaults to :func:`pick_device`'s, a CUDA device is
    made the current one."""
    env = os.environ
    rank, world, local = (
        int(env.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))
    )
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        logger.info("rank %d/%d on %s", rank, world, dev)
    return DistInfo(rank, world, dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
