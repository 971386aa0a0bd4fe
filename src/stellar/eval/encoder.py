"""The encoder contract of the evaluation protocols (STELLAR and the ViT / MAE baselines), and
:func:`extract_features`, the one encoding pass behind every protocol and ``stellar extract``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from stellar.data.folder import EvalImages
from stellar.data.loader import EpochLoader, build_loader
from stellar.errors import UsageError
from stellar.images import preprocess
from stellar.progress import progress_bar
from stellar.runtime import autocast

logger = logging.getLogger(__name__)

# Every output an encoding pass may keep (a probe reads ``model.feature_keys``; ``spatial``
# and ``peak_dist`` are maps and statistics).
FEATURE_KEYS: tuple[str, ...] = ("cls", "dense", "sparse", "spatial", "lowrank", "peak_dist")

PathLike = str | os.PathLike[str]
Images = PathLike | Image.Image | Iterable[PathLike] | Iterable[Image.Image] | Dataset


class Encoder(Protocol):
    """A frozen image encoder as the protocols use it: ``feature_keys`` are the outputs a probe
    may read; ``config.encoder`` gives the width and native ``image_size``, ``config.decoder``
    the size of a reconstruction-probe decoder."""

    patch_size: int
    feature_keys: tuple[str, ...]
    config: Any

    @property
    def device(self) -> torch.device: ...

    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) RGB in [0, 1], H and W multiples of p -> ``{key: (B, tokens, d)}``."""
        ...

    def forward_encode(self, images: Tensor) -> dict[str, Tensor]:
        """:meth:`encode` without input checks (crops resampled slightly outside [0, 1])."""
        ...


def pool_features(x: Tensor) -> Tensor:
    """Mean over tokens: (N, T, D) -> (N, D); (N, D) features are returned as they are."""
    return x.mean(dim=1) if x.dim() == 3 else x


def check_keys(keys: Sequence[str]) -> list[str]:
    """``keys`` without blanks and repeats, each one of :data:`FEATURE_KEYS`."""
    keys = list(dict.fromkeys(k.strip() for k in keys if k.strip()))
    bad = [k for k in keys if k not in FEATURE_KEYS]
    if not keys or bad:
        raise UsageError(
            f"expected feature keys among {', '.join(FEATURE_KEYS)}, got {keys or 'none'}"
        )
    return keys


def weights_fingerprint(model: Any) -> str:
    """A short hash of every tensor the features depend on (what saved features were computed
    with): the whole state dict but the decoder, the clustering heads and the tokenizer, which
    no feature reads, so an encode and a reconstruct load of one file agree."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(("decoder.", "clustering_head.", "cls_cluster_head.", "tokenizer.")):
            continue
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.inference_mode()
def encode_batch(
    model: Encoder,
    images: Tensor,
    keys: Sequence[str],
    fp16: bool = False,
) -> dict[str, Tensor]:
    """The ``keys`` of ``model.encode(images)`` as CPU float32 (or float16) ``{key: (B, ...)}``,
    under :func:`stellar.runtime.autocast`; a ValueError when one holds NaN or inf (e.g.
    diverged weights)."""
    device = model.device
    with autocast(device):
        out = model.encode(images.to(device, non_blocking=True))
    dtype = torch.float16 if fp16 else torch.float32
    kept = {k: out[k].to("cpu", dtype) for k in keys}
    bad = [k for k, v in kept.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise ValueError(
            f"the model produced non-finite {', '.join(bad)} features (NaN or inf); expected "
            "finite weights: is the checkpoint diverged?"
        )
    return kept


# ---------------------------------------------------------------------------- image passes
class _ImageList(Dataset):
    """PIL images (or files) read by :func:`stellar.images.preprocess`, as EvalImages items."""

    def __init__(self, images: Sequence[Image.Image | PathLike], resolution: int) -> None:
        self.images, self.resolution = list(images), resolution

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"{len(self)} images"

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        img = self.images[i]
        try:
            image = preprocess(img, self.resolution)[0]
        except Exception as err:  # noqa: BLE001 - as a broken file: skipped and reported
            logger.warning("skipping unreadable image %d (%s: %s)", i, type(err).__name__, err)
            return None
        path = str(img) if not isinstance(img, Image.Image) else getattr(img, "filename", "")
        path = path or f"<image {i}>"
        return {"image": image, "label": torch.tensor(-1), "index": torch.tensor(i), "path": path}


def make_loader(
    dataset: Dataset, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False
) -> EpochLoader:
    """A sequential loader that leaves broken files out (and skips batches of only those); an
    oversized ``batch_size`` or ``num_workers`` is clamped to the data set, costing nothing."""
    batch_size = min(batch_size, max(len(dataset), 1))
    num_workers = min(num_workers, math.ceil(len(dataset) / max(batch_size, 1)))
    return build_loader(
        dataset, batch_size, num_workers, shuffle=False, drop_last=False,
        pin_memory=pin_memory, persistent_workers=False,
    )  # fmt: skip


def decodable_batches(
    dataset: Dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    pin_memory: bool = False,
    desc: str | None = None,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """The batches of :func:`make_loader` under a progress bar; the count of unreadable files
    is logged at the end, and a data set none of whose images decodes is an error."""
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
        raise UsageError(f"expected at least one decodable image in {dataset}, found none")


def extract_features(
    model: Encoder,
    images: Images,
    features: str | Sequence[str] = ("sparse",),
    batch_size: int = 64,
    *,
    resolution: int | None = None,
    resize_ratio: float = 1.0,
    pool: bool = False,
    fp16: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    keep_images: bool = False,
) -> dict[str, Any]:
    """Features of a collection of images, in memory, one row per readable image, encoded
    under bf16 autocast where the device computes it natively (rows then differ from
    ``model.encode``'s fp32 by bf16 rounding; ``with stellar.runtime.precision("fp32")`` for
    exact ones).

    Args:
        images: a folder (scanned recursively; class sub-folders give ``labels``), image
            files or PIL images (one, a list or any iterable), or a dataset of
            :class:`~stellar.data.folder.EvalImages` items. Files and PIL images are read as
            :meth:`STELLAR.preprocess` reads them; unreadable files are skipped (a warning
            names each one).
        features: outputs of ``model.encode`` to keep, among :data:`FEATURE_KEYS` (or one).
        resize_ratio: files' shorter side before the centre crop, over ``resolution`` (default:
            the model's native); ``stellar extract`` and ``stellar eval`` use 256/224.
        pool: mean over the token axis, batch by batch, so each feature is (N, d).
        keep_images: also return the model inputs as ``images``, (N, 3, R, R) uint8.

    Returns:
        ``{key: (N, ...)}`` for each feature (the model's per-image shape: ``sparse`` (N, r, d),
        ``cls`` (N, 1, d), ``dense`` / ``lowrank`` (N, n, d), ``spatial`` (N, n, r),
        ``peak_dist`` (N, r); (N, d) with ``pool``), ``paths`` (N image paths, in row order),
        ``labels`` (N,) int64 (an index into ``classes``, the class folders' names; -1 and
        ``[]`` without them) and ``indices`` (N,) int64, each row's position in ``images``.
    """
    keys = check_keys([features] if isinstance(features, str) else features)
    res = resolution or model.config.encoder.image_size
    if isinstance(images, Tensor | np.ndarray):
        raise TypeError(
            "extract_features reads image files and PIL images (Image.fromarray for an array); "
            "a tensor batch goes to encode()"
        )
    if isinstance(images, Image.Image):
        images = [images]
    elif not isinstance(images, str | os.PathLike | Dataset):
        images = list(images)  # a generator is read once
    if isinstance(images, Dataset):
        dataset = images
    elif isinstance(images, list) and any(isinstance(x, Image.Image) for x in images):
        dataset = _ImageList(images, res)
    else:  # the view of STELLAR.preprocess at ratio 1: shorter side to ``res``, centre crop
        dataset = EvalImages(images, res, resize_ratio=resize_ratio)
    pin = model.device.type == "cuda"
    desc = f"features[{','.join(keys)}]"
    batches = decodable_batches(dataset, batch_size, num_workers, pin, desc, progress)
    out = encode_batches(model, batches, keys, fp16, pool, keep_images)
    return {**out, "classes": list(getattr(dataset, "classes", []))}


def encode_batches(
    model: Encoder,
    batches: Iterable[dict[str, Any]],
    keys: Sequence[str],
    fp16: bool = False,
    pool: bool = False,
    keep_images: bool = False,
) -> dict[str, Any]:
    """:func:`extract_features` of loader batches; features are empty lists when none came."""
    parts: dict[str, list[Tensor]] = {k: [] for k in (*keys, "labels", "indices")}
    paths: list[str] = []
    for batch in batches:
        for k, v in encode_batch(model, batch["image"], keys, fp16).items():
            parts[k].append(pool_features(v) if pool else v)
        parts["labels"].append(batch["label"])
        parts["indices"].append(batch["index"])
        paths.extend(batch["path"])
        if keep_images:
            parts.setdefault("images", []).append(batch["image"].mul(255).round_().byte())
    return {**{k: torch.cat(v) if v else v for k, v in parts.items()}, "paths": paths}
