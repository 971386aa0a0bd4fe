"""Distributed Sinkhorn: two gloo ranks reproduce one process on the concatenated batch."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stellar.losses.objective import sinkhorn_knopp

# Uneven shards on purpose: the all-reduces are over (K,) statistics, not rows.
_SPLIT = (5, 9)


def _scores() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return torch.randn(sum(_SPLIT), 24, generator=gen) * 6


def _worker(rank: int, world_size: int, store_path: str, out_dir: str) -> None:
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        shard = _scores().split(list(_SPLIT))[rank]
        torch.save(sinkhorn_knopp(shard, n_iterations=3), Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    pieces = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    full = sinkhorn_knopp(_scores(), n_iterations=3)
    torch.testing.assert_close(torch.cat(pieces), full, atol=1e-6, rtol=0)
    # Without the collectives a shard balances only against itself, which differs.
    alone = sinkhorn_knopp(_scores()[: _SPLIT[0]], n_iterations=3)
    assert (alone - pieces[0]).abs().max() > 1e-3
