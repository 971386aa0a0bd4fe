"""DataLoader construction for map-style datasets that return dicts of tensors.

The loader only moves canvases (fixed-size uint8 images plus their valid size) to the
trainer; the random crops and colour augmentation run batched on the device
(:mod:`stellar.data.augment`), so workers do nothing but decode.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

__all__ = ["EpochLoader", "ResumableSampler", "build_loader", "collate_dict"]


class ResumableSampler(Sampler[int]):
    """This rank's slice of a (seed, epoch)-shuffled order, starting at a given position.

    The one sampler of the library (training, probes, single process or torchrun). Each epoch
    drops the last ``length % world`` samples of the order so that every rank gets the same
    number: ranks then stay in the same epoch at the same position, which is what a
    checkpoint (written by rank 0 alone) records for all of them. The same seed and epoch
    give the same order on every run; call :meth:`set_position` before each epoch.

    Args:
        length: dataset size.
        seed: seed of the shuffling.
        rank, world: this process takes positions ``rank, rank + world, ...`` of the order.
        shuffle: shuffle from ``(seed, epoch)``; False keeps the dataset order.
    """

    def __init__(
        self, length: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True
    ) -> None:
        self.length, self.seed, self.rank, self.world = int(length), int(seed), rank, world
        self.shuffle = bool(shuffle)
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        """Iterate epoch ``epoch`` from its ``start``-th sample on this rank."""
        self.epoch, self.start = int(epoch), int(start)

    def order(self) -> list[int]:
        """All of this rank's indices in the current epoch."""
        kept = self.length - self.length % self.world
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=g)[:kept]
        else:
            order = torch.arange(kept)
        return order[self.rank :: self.world].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return self.length // self.world - self.start


class EpochLoader(DataLoader):
    """A DataLoader whose :meth:`set_epoch` reshuffles its sampler and that never yields an
    empty batch (a batch whose files were all unreadable is skipped).

    ``drawn`` counts the batches the current iteration has taken from the sampler, skipped
    ones included: ``drawn * batch_size`` is how far this rank's position in the epoch has
    moved since the iteration started, which a resume needs.
    """

    drawn = 0

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` from its beginning (call before iterating each epoch)."""
        self.sampler.set_position(epoch, 0)

    def __iter__(self) -> Iterator[Any]:
        self.drawn = 0
        for batch in super().__iter__():
            self.drawn += 1
            if batch:
                yield batch


def collate_dict(batch: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Stack sample dicts into one dict of batched tensors (``default_collate`` per key).

    A ``None`` sample (an unreadable file, see :class:`~stellar.data.folder.ImageFolder`) is
    left out, so a batch may be smaller than requested; empty when every sample was None.
    """
    batch = [sample for sample in batch if sample is not None]
    if not batch:  # every file of the batch was unreadable: the loader skips it
        return {}
    return {k: default_collate([sample[k] for sample in batch]) for k in batch[0]}


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
    from ``seed`` and the epoch; call ``loader.set_epoch(epoch)`` before each epoch.
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
