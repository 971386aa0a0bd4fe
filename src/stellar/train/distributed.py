"""torchrun integration for training: the process group (from :mod:`stellar.runtime`) and
the reduction of logged scalars across ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist

from stellar.runtime import DistInfo, setup, teardown

__all__ = ["DistInfo", "mean_across_ranks", "setup", "teardown"]


def _local(value: torch.Tensor) -> torch.Tensor:
    # FSDP2 returns replicated DTensors (e.g. the clipped grad norm): take the plain tensor.
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def mean_across_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Average scalar tensors over ranks (one all-reduce) and return floats."""
    if not values:
        return {}
    names = sorted(values)
    local = [_local(values[n]).detach().float().reshape(()) for n in names]
    stacked = torch.stack(local)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(names, stacked.tolist(), strict=True))
