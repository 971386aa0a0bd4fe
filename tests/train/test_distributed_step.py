"""DDP on 2 gloo processes equals one process on the same global batch (Sinkhorn included).

The optimizer here is SGD: Adam's first update is ~lr·sign(g), which turns 1e-9 round-off
differences of near-zero gradients (summation order across ranks) into lr-sized weight
differences; that is Adam, not DDP, and would hide what this test checks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from stellar import create_stellar
from stellar.losses.objective import ObjectiveConfig, StellarObjective
from stellar.train.metrics import mean_across_ranks

STEPS = 2
B, V, L = 4, 2, 2


def _global_batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return {
        "image": torch.rand(B, 3, 64, 64, generator=g),
        "masked_views": torch.rand(B * V, 3, 64, 64, generator=g),
        "keep_idx": torch.stack([torch.randperm(64, generator=g)[:16] for _ in range(B * V)]),
        "local_views": torch.rand(B * L, 3, 32, 32, generator=g),
    }


def _shard(batch, rank: int, world: int) -> dict[str, torch.Tensor]:
    return {k: v.chunk(world)[rank] for k, v in batch.items()}


def _run(rank: int, world: int) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = create_stellar("stellar-tiny", purpose="pretrain").requires_grad_(True).train()
    objective = StellarObjective(model, ObjectiveConfig())
    step_fn = DistributedDataParallel(objective) if world > 1 else objective
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    history = []
    for step in range(STEPS):
        total, terms = step_fn(_shard(_global_batch(step), rank, world))
        total.backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append(mean_across_ranks([(step, {"loss": total.detach(), **terms})])[0][1])
    return history, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, store: str, result: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        history, state = _run(rank, world)
        if rank == 0:
            torch.save({"history": history, "state": state}, result)
        dist.barrier()  # no rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_on_the_global_batch(tmp_path):
    result = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(result)), nprocs=2, join=True)
    ddp = torch.load(result, weights_only=True)
    single_history, single_state = _run(0, 1)
    for ours, theirs in zip(ddp["history"], single_history, strict=True):
        assert ours.keys() == theirs.keys()
        for name in ours:
            # 1e-5 absolute, plus 1e-6 relative: fp32 holds ~7 digits of a total near 130.
            tolerance = 1e-5 + 1e-6 * abs(theirs[name])
            assert abs(ours[name] - theirs[name]) <= tolerance, (name, ours[name], theirs[name])
    for key, value in single_state.items():
        torch.testing.assert_close(ddp["state"][key], value, atol=1e-5, rtol=1e-4, msg=key)
