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
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

__all__ = ["EpochLoader", "EpochSampler", "build_loader", "collate_dict"]


class EpochSampler(Sampler[int]):
    """All indices of a dataset, shuffled from ``seed + epoch`` (or in order).

    The single-process counterpart of ``DistributedSampler``: the same seed and epoch give
    the same order on every run; call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0) -> None:
        if length < 0:
            raise ValueError(f"expected a non-negative dataset length, got {length}")
        self.length, self.shuffle, self.seed, self.epoch = int(length), bool(shuffle), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())

    def __len__(self) -> int:
        return self.length


class EpochLoader(DataLoader):
    """A DataLoader whose :meth:`set_epoch` reshuffles its sampler."""

    def set_epoch(self, epoch: int) -> None:
        """Forward ``epoch`` to the sampler (call before iterating each epoch)."""
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)


def collate_dict(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of sample dicts into one dict of batched tensors.

    Tensors are stacked along a new first axis (into shared memory inside workers), numbers
    become tensors, anything else is collated by ``torch.utils.data.default_collate``.

    Args:
        batch: samples, each a mapping with the same keys.

    Returns:
        dict mapping each key to its batched value, e.g. ``canvas`` (B, 3, S, S).
    """
    if not batch:
        raise ValueError("expected a non-empty list of samples")
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
) -> EpochLoader:
    """A DataLoader of dict batches, rank-disjoint under ``torch.distributed``.

    Sampling: with ``distributed`` (default: whenever ``torch.distributed`` is initialised,
    or when ``num_replicas`` / ``rank`` are given explicitly) a ``DistributedSampler`` gives
    each rank a disjoint shard; otherwise an :class:`EpochSampler`. Both shuffle from
    ``seed`` and the epoch: call ``loader.set_epoch(epoch)`` before each epoch.

    Args:
        dataset: map-style dataset whose items are dicts of tensors (e.g. ``canvas``,
            ``size``, ``label``, ``index`` plus any extra keys).
        batch_size: samples per batch (per rank).
        num_workers: decoding worker processes (0 decodes in the main process); workers are
            persistent across epochs.
        shuffle: shuffle the order every epoch.
        seed: seed of the shuffling and of the worker RNGs.
        drop_last: drop the last incomplete batch (and, distributed, the uneven tail instead
            of padding it with repeated samples).
        distributed: force (True) or forbid (False) the DistributedSampler; None = auto.
        num_replicas, rank: shard explicitly (defaults: world size and rank of the process
            group).
        pin_memory: pin batches for fast host-to-device copies; default when CUDA exists.
        prefetch_factor: batches prefetched per worker (DataLoader default when None).

    Returns:
        An :class:`EpochLoader` yielding dicts of stacked tensors.

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
    sampler: Sampler[int]
    if distributed:
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        sampler = DistributedSampler(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
    else:
        rank = 0
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)
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
        extra["persistent_workers"] = True
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
