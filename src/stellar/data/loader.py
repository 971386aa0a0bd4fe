"""DataLoader construction for map-style datasets that return dicts of tensors.

The loader only moves canvases (fixed-size uint8 images plus their valid size) to the
trainer; the random crops and colour augmentation run batched on the device
(:mod:`stellar.data.augment`), so workers do nothing but decode.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

__all__ = ["EpochLoader", "ResumableSampler", "build_loader", "collate_dict"]


class ResumableSampler(Sampler[int]):
    """This rank's slice of a (seed, epoch)-shuffled order, starting at a given position.

    The one sampler of the library (training, probes, single process or torchrun). Each epoch
    drops the last ``length % world`` samples of the order so that every rank gets the same
    number: ranks then stay in the same epoch at the same position, which is what a
    checkpoint (written by rank 0 alone) records for all of them. The same seed and epoch
    give the same order on every run; call :meth:`set_epoch` (or :meth:`set_position` to
    resume mid-epoch) before each epoch.

    Args:
        length: dataset size.
        seed: seed of the shuffling.
        rank, world: this process takes positions ``rank, rank + world, ...`` of the order.
        shuffle: shuffle from ``(seed, epoch)``; False keeps the dataset order.
    """

    def __init__(
        self, length: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True
    ) -> None:
        if length < 0 or world < 1 or not 0 <= rank < world:
            raise ValueError(
                "expected length >= 0 and 0 <= rank < world, got "
                f"length={length}, rank={rank}, world={world}"
            )
        self.length, self.seed, self.rank, self.world = int(length), int(seed), rank, world
        self.shuffle = bool(shuffle)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` from its beginning."""
        self.set_position(epoch, 0)

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
        """Forward ``epoch`` to the sampler (call before iterating each epoch)."""
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        self.drawn = 0
        for batch in super().__iter__():
            self.drawn += 1
            if batch:
                yield batch


def collate_dict(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of sample dicts into one dict of batched tensors.

    Tensors are stacked along a new first axis (into shared memory inside workers), numbers
    become tensors, anything else is collated by ``torch.utils.data.default_collate``. A
    ``None`` sample (an unreadable file, see :class:`~stellar.data.folder.ImageFolder`) is
    left out, so a batch may be smaller than requested.

    Args:
        batch: samples, each a mapping with the same keys, or None.

    Returns:
        dict mapping each key to its batched value, e.g. ``canvas`` (B, 3, S, S); empty when
        every sample was None.
    """
    batch = [sample for sample in batch if sample is not None]
    if not batch:  # every file of the batch was unreadable: the loader skips it
        return {}
    first = batch[0]
    if not isinstance(first, Mapping):
        raise ValueError(f"expected samples as dicts of tensors, got {type(first).__name__}")
    keys = list(first.keys())
    for sample in batch[1:]:
        if not isinstance(sample, Mapping) or set(sample.keys()) != set(keys):
            got = sorted(sample.keys()) if isinstance(sample, Mapping) else type(sample).__name__
            raise ValueError(f"expected every sample to have keys {sorted(keys)}, got {got}")
    return {k: default_collate([sample[k] for sample in batch]) for k in keys}


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy/random from it so
    # datasets that use them are reproducible and differ across workers.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    distributed: bool | None = None,
    *,
    num_replicas: int | None = None,
    rank: int | None = None,
    pin_memory: bool | None = None,
    prefetch_factor: int | None = None,
    persistent_workers: bool = True,
) -> EpochLoader:
    """A DataLoader of dict batches, rank-disjoint under ``torch.distributed``.

    Sampling: a :class:`ResumableSampler`, sharded over the ranks with ``distributed``
    (default: whenever ``torch.distributed`` is initialised, or when ``num_replicas`` /
    ``rank`` are given explicitly); it shuffles from ``seed`` and the epoch: call
    ``loader.set_epoch(epoch)`` before each epoch.

    Args:
        dataset: map-style dataset whose items are dicts of tensors (e.g. ``canvas``,
            ``size``, ``label``, ``index`` plus any extra keys), or None for an unreadable
            file (left out of its batch).
        batch_size: samples per batch (per rank).
        num_workers: decoding worker processes (0 decodes in the main process).
        shuffle: shuffle the order every epoch.
        seed: seed of the shuffling and of the worker RNGs.
        drop_last: drop the last incomplete batch. Distributed, the uneven tail of the order
            (``len % world`` samples) is always dropped so that ranks stay in step.
        distributed: force (True) or forbid (False) sharding; None = auto.
        num_replicas, rank: shard explicitly (defaults: world size and rank of the process
            group).
        pin_memory: pin batches for fast host-to-device copies; default when CUDA exists.
        prefetch_factor: batches prefetched per worker (DataLoader default when None).
        persistent_workers: keep the workers alive across epochs (one pass: False).

    Returns:
        An :class:`EpochLoader` yielding dicts of stacked tensors; its ``sampler`` is the
        :class:`ResumableSampler`.

    Raises:
        ValueError: bad sizes, distributed requested without a process group, or
            ``drop_last`` with fewer samples per rank than ``batch_size``.
    """
    if not isinstance(dataset, Sized):
        raise ValueError("expected a map-style dataset with __len__ and __getitem__")
    if int(batch_size) < 1 or int(num_workers) < 0:
        raise ValueError(
            f"expected batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}"
        )
    initialised = dist.is_available() and dist.is_initialized()
    explicit = num_replicas is not None or rank is not None
    if distributed is None:
        distributed = initialised or explicit
    if distributed and not (initialised or explicit):
        raise ValueError(
            "distributed=True expects an initialised torch.distributed process group "
            "(or explicit num_replicas and rank)"
        )
    if distributed:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
    else:
        num_replicas, rank = 1, 0
    sampler = ResumableSampler(len(dataset), seed, rank, num_replicas, shuffle=shuffle)
    if drop_last and len(sampler) < batch_size:
        raise ValueError(
            f"expected at least batch_size={batch_size} samples per rank with drop_last, "
            f"got {len(sampler)} (dataset of {len(dataset)})"
        )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    workers = int(num_workers)
    extra: dict[str, Any] = {}
    if workers > 0:
        extra["persistent_workers"] = bool(persistent_workers)
        extra["worker_init_fn"] = _seed_worker
        if prefetch_factor is not None:
            extra["prefetch_factor"] = int(prefetch_factor)
    # Distinct worker seeds per rank, reproducible from the seed.
    generator = torch.Generator().manual_seed(int(seed) + 1_000_003 * int(rank))
    return EpochLoader(
        dataset,
        batch_size=int(batch_size),
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_dict,
        pin_memory=bool(pin_memory),
        drop_last=drop_last,
        generator=generator,
        **extra,
    )
