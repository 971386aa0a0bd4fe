"""The one training loop of every probe on a frozen model (linear, segmentation, reconstruction).

AdamW with a per-step cosine decay of the learning rate from ``lr`` to 0 and no warm-up (the
paper fixes the probes, not their optimiser schedule). Each protocol keeps its
:class:`ProbeSchedule` as a module constant, the defaults of its CLI options too.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from stellar.errors import nonneg_float, positive_float, positive_int
from stellar.progress import progress_bar

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSchedule:
    """How a probe is optimised (see the module); ``seed`` fixes the batch order (and, in the
    protocols, the probe's initialisation)."""

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    seed: int = 0

    def add_arguments(self, p: argparse.ArgumentParser, batch_flag: str | None) -> None:
        p.add_argument("--epochs", type=positive_int, default=self.epochs, help="of the probe")
        p.add_argument("--lr", type=positive_float, default=self.lr, help="AdamW's")
        p.add_argument(
            "--weight-decay", type=nonneg_float, default=self.weight_decay, help="AdamW's"
        )
        if batch_flag is not None:
            p.add_argument(batch_flag, type=positive_int, default=self.batch_size, help="per step")

    @classmethod
    def from_args(cls, args: argparse.Namespace, batch_size: int) -> ProbeSchedule:
        return cls(args.epochs, args.lr, args.weight_decay, batch_size, args.seed)

    def index_batches(self, n: int) -> Callable[[int], list[Tensor]]:
        """``batches(epoch)`` over ``n`` cached samples for :func:`fit_probe`: each epoch a new
        permutation of ``range(n)`` (from a generator seeded with ``seed``), chunked."""
        generator = torch.Generator().manual_seed(self.seed)

        def batches(epoch: int) -> list[Tensor]:
            order = torch.randperm(n, generator=generator)
            return [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]

        return batches


def fit_probe(
    probe: nn.Module,
    schedule: ProbeSchedule,
    batches: Callable[[int], Collection[Any]],
    loss_of: Callable[[Any], tuple[Tensor, int]],
    device: torch.device | str,
    desc: str,
    progress: bool = True,
    skip_nonfinite: bool = False,
) -> list[dict[str, float]]:
    """Train ``probe`` in place for ``schedule.epochs`` epochs of ``batches(epoch)`` (as many
    every epoch: their ``len`` sets the length of the cosine), ``loss_of(batch)`` returning
    ``(loss, samples in the batch)``; ``skip_nonfinite`` skips a batch whose loss is not finite
    (a segmentation batch whose pixels are all ignored). Returns ``{"epoch", "loss"}`` per
    epoch (``epoch`` from 1, the sample-weighted mean loss)."""
    epoch_batches = batches(0)  # asked for up front: their count sets the cosine's length
    total = max(1, schedule.epochs * len(epoch_batches))
    optimizer = torch.optim.AdamW(
        probe.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    )
    history: list[dict[str, float]] = []
    probe.train()
    bar = progress_bar(range(schedule.epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        if epoch:
            epoch_batches = batches(epoch)
        loss_sum, seen = torch.zeros((), device=device), 0
        for batch in epoch_batches:
            loss, count = loss_of(batch)
            if skip_nonfinite and not torch.isfinite(loss):
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * count
            seen += count
        record: dict[str, float] = {"epoch": epoch + 1, "loss": (loss_sum / max(seen, 1)).item()}
        history.append(record)
        bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "epoch"})
        logger.debug("%s %s", desc, record)
    return history


def seeded(build: Callable[[], nn.Module], seed: int, device: torch.device | str) -> nn.Module:
    """``build()`` initialised from ``seed`` (the global RNG left untouched), on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().to(device)


def train_probe(
    build: Callable[[], nn.Module],
    x: Tensor,
    y: Tensor,
    loss: Callable[[Tensor, Tensor], Tensor],
    schedule: ProbeSchedule,
    device: torch.device | str,
    desc: str,
    progress: bool = True,
    skip_nonfinite: bool = False,
) -> nn.Module:
    """``build()`` initialised from ``schedule.seed`` and trained by :func:`fit_probe` on
    cached (N, ...) inputs ``x`` and integer targets ``y`` with ``loss(output, targets)``."""
    probe = seeded(build, schedule.seed, device)

    def loss_of(idx: Tensor) -> tuple[Tensor, int]:
        out = probe(x[idx].to(device, torch.float32))
        return loss(out, y[idx].to(device).long()), idx.numel()

    batches = schedule.index_batches(x.shape[0])
    fit_probe(probe, schedule, batches, loss_of, device, desc, progress, skip_nonfinite)
    return probe


@torch.no_grad()
def predict(
    probe: nn.Module,
    x: Tensor,
    batch_size: int,
    device: torch.device | str,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``forward(batch)`` (default ``probe(batch)``) over (N, ...) inputs in batches, with
    ``probe`` left in eval mode; the outputs concatenated on the CPU, (N, ...)."""
    forward = probe if forward is None else forward
    probe.eval()
    outs = [
        forward(x[i : i + batch_size].to(device, torch.float32)).cpu()
        for i in range(0, x.shape[0], batch_size)
    ]
    return torch.cat(outs)
