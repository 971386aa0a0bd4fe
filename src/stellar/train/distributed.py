"""torchrun integration: process-group setup from the environment, rank helpers, reductions."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and device of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def setup(device: str | None = None) -> DistInfo:
    """Join the torchrun process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        logger.info("rank %d/%d on %s", rank, world, dev)
    return DistInfo(rank, world, local, dev)


def teardown() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
