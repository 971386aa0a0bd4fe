"""The DataLoader of dict items: workers only decode (training's crops and colour run batched
on the device, :mod:`stellar.data.augment`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate


class ResumableSampler(DistributedSampler):
    """This rank's slice of a (seed, epoch)-shuffled order, from a given position on: torch's
    ``DistributedSampler`` (every rank gets as many samples) plus :meth:`set_position`, which a
    resume needs. The one sampler of the library (training and probes)."""

    def __init__(
        self, length: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True
    ) -> None:
        super().__init__(range(length), world, rank, shuffle, seed * 100_003, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Iterate epoch ``epoch`` from its ``start``-th sample on this rank."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


class EpochLoader(DataLoader):
    """A DataLoader that never yields an empty batch (a batch whose files were all unreadable
    is skipped).

    ``drawn`` counts the batches the current iteration has taken from the sampler, skipped
    ones included: ``drawn * batch_size`` is how far this rank's position in the epoch has
    moved since the iteration started, which a resume needs.
    """

    drawn = 0

    def __iter__(self) -> Iterator[Any]:
        self.drawn = 0
        for batch in super().__iter__():
            self.drawn += 1
            if batch:
                yield batch


def collate_dict(batch: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """``default_collate`` of the samples that are not None (an unreadable file, see
    :class:`~stellar.data.folder.ImageFolder`): a batch may be smaller than requested, and is
    ``{}`` (skipped by the loader) when every sample was None."""
    batch = [sample for sample in batch if sample is not None]
    return default_collate(batch) if batch else {}


def build_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    *,
    num_replicas: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = True,
) -> EpochLoader:
    """A DataLoader of dict batches (items: dicts of tensors, or None for an unreadable file,
    left out of its batch) through a :class:`ResumableSampler` of this rank's share, shuffled
    from ``seed`` and the epoch; call ``loader.sampler.set_position(epoch, 0)`` before each epoch.
    ``persistent_workers=False`` for a single pass.
    """
    return EpochLoader(
        dataset,
        batch_size=batch_size,
        sampler=ResumableSampler(len(dataset), seed, rank, num_replicas, shuffle=shuffle),
        num_workers=num_workers,
        collate_fn=collate_dict,
        pin_memory=pin_memory,
        drop_last=drop_last,
        # distinct worker seeds per rank, reproducible from the seed
        generator=torch.Generator().manual_seed(seed + 1_000_003 * rank),
        persistent_workers=persistent_workers and num_workers > 0,
    )
