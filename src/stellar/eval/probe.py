"""The one training loop of every probe on a frozen model (linear, segmentation, reconstruction).

AdamW with a per-step cosine decay of the learning rate from ``lr`` to 0 and no warm-up (the
paper fixes the probes, not their optimiser schedule). The caller owns the data order and the
loss; the loop owns the optimiser, the schedule, the progress bar and the per-epoch record.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from stellar.progress import progress_bar

__all__ = ["fit_probe", "shuffled_batches"]

logger = logging.getLogger(__name__)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch of index batches: a permutation of ``range(n)`` from ``generator``, chunked."""
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def fit_probe(
    probe: nn.Module,
    epochs: int,
    steps_per_epoch: int,
    batches: Callable[[int], Iterable[Any]],
    loss_of: Callable[[Any], tuple[Tensor, int]],
    lr: float,
    weight_decay: float,
    device: torch.device | str,
    desc: str,
    progress: bool = True,
    after_epoch: Callable[[int], dict[str, float]] | None = None,
    skip_nonfinite: bool = False,
) -> list[dict[str, float]]:
    """Train ``probe`` in place.

    Args:
        probe: the trainable module (already on ``device``).
        epochs: passes over the data (>= 1).
        steps_per_epoch: optimiser steps per epoch, for the length of the cosine schedule.
        batches: ``batches(epoch)`` -> that epoch's batches, in order.
        loss_of: batch -> ``(loss, samples in the batch)``.
        lr, weight_decay: AdamW settings.
        device: where the loss is accumulated.
        desc: progress-bar label.
        progress: show a tqdm bar over epochs.
        after_epoch: ``after_epoch(epoch)`` -> extra entries of that epoch's record.
        skip_nonfinite: skip (no step) a batch whose loss is not finite, e.g. a segmentation
            batch whose pixels are all ignored.

    Returns:
        One record per epoch: ``epoch`` (from 1), ``loss`` (sample-weighted mean) and the
        entries of ``after_epoch``.

    Raises:
        ValueError: ``epochs`` < 1.
    """
    if epochs < 1:
        raise ValueError(f"expected epochs >= 1, got {epochs}")
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    )
    history: list[dict[str, float]] = []
    probe.train()
    bar = progress_bar(range(epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        loss_sum, seen = torch.zeros((), device=device), 0
        for batch in batches(epoch):
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
        if after_epoch is not None:
            record.update(after_epoch(epoch))
        history.append(record)
        bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "epoch"})
        logger.debug("%s %s", desc, record)
    return history
