"""Evaluation passes over images: the centre-crop view of a folder, read in order.

The dataset is :class:`stellar.data.folder.EvalImages` (the image-folder dataset through its
centre-crop view; re-exported here). Loaders are :func:`stellar.data.loader.build_loader`
without shuffling or sharding: a broken file's item is ``None`` and is left out of its batch,
so a batch may hold fewer images than ``batch_size``, and a batch of broken files only is
skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Dataset

from stellar.data.folder import EvalImages, find_images
from stellar.data.loader import EpochLoader, build_loader
from stellar.progress import progress_bar

__all__ = ["EvalImages", "decodable_batches", "find_images", "make_loader"]

logger = logging.getLogger(__name__)


def make_loader(
    dataset: Dataset, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False
) -> EpochLoader:
    """A sequential (unshuffled, unsharded) loader that leaves broken files out."""
    return build_loader(
        dataset,
        batch_size,
        num_workers,
        shuffle=False,
        drop_last=False,
        distributed=False,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def decodable_batches(
    dataset: Dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    pin_memory: bool = False,
    desc: str | None = None,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """The batches of :func:`make_loader` under a tqdm bar; the number of files skipped as
    unreadable is logged at the end.

    Raises:
        ValueError: once the loader is exhausted, if no image of ``dataset`` could be decoded.
    """
    loader = make_loader(dataset, batch_size, num_workers, pin_memory=pin_memory)
    found = 0
    for batch in progress_bar(loader, desc=desc, unit="batch", disable=not progress):
        found += batch["index"].shape[0]
        yield batch
    skipped = len(dataset) - found  # every item not delivered was an unreadable file
    if skipped:
        logger.warning(
            "%s: skipped %d unreadable file(s) of %d", desc or "pass", skipped, found + skipped
        )
    if not found:
        raise ValueError(f"expected at least one decodable image in {dataset!r}, found none")
