"""Segmentation data: image folders paired with PNG label maps, validated before any work.

Two layouts are recognised under a folder ``ROOT``:

- **ADE20K**: ``ROOT/images/<split>/*.jpg`` with ``ROOT/annotations/<split>/*.png``, where
  ``<split>`` is ``training`` or ``validation`` (the ``--train`` folder reads ``training``, the
  ``--val`` folder ``validation``; both may be the same ``ROOT``).
- **simple**: ``ROOT/images/`` with ``ROOT/masks/``, ``ROOT/labels/`` or ``ROOT/annotations/``,
  the label map of ``images/a/b.jpg`` being ``<labels>/a/b.png`` (same relative stem).

Label maps are single-channel images of class indices; 255 is the ignore label.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from stellar.checkpoint.weights import listing
from stellar.data.folder import IMG_EXTENSIONS, find_images
from stellar.errors import UsageError
from stellar.images import exif_orientation, upright
from stellar.progress import progress_bar

logger = logging.getLogger(__name__)

# Lossy formats (JPEG) would corrupt class indices, so only lossless ones count as labels.
LABEL_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff", ".gif", ".ppm")
LABEL_FOLDERS: tuple[str, ...] = ("annotations", "masks", "labels")
SINGLE_CHANNEL_MODES: tuple[str, ...] = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")
ADE_SPLITS: dict[str, str] = {"train": "training", "val": "validation"}
IGNORE = 255  # the label of unlabelled pixels, skipped by the loss and the metric


@dataclass
class SegmentationSplit:
    """One validated split: images (sorted by relative path) and their label maps; ``layout``
    is ``"ade20k"`` or ``"simple"``."""

    layout: str
    images: list[Path]
    labels: list[Path]


def _locate(root: Path, split: str) -> tuple[str, Path, Path]:
    """(layout, images folder, labels folder) of ``root`` for ``split`` (train / val)."""
    ade = ADE_SPLITS[split]
    if (root / "images" / ade).is_dir() and (root / "annotations" / ade).is_dir():
        return "ade20k", root / "images" / ade, root / "annotations" / ade
    if any((root / "images" / s).is_dir() for s in ADE_SPLITS.values()):
        # an ADE20K tree without this split must not be read as one mixed "simple" folder
        raise UsageError(
            f"{str(root)!r} is in the ADE20K layout but lacks images/{ade}/ or "
            f"annotations/{ade}/ for the {split} split"
        )
    if (root / "images").is_dir():
        for name in LABEL_FOLDERS:
            if (root / name).is_dir():
                return "simple", root / "images", root / name
    raise UsageError(
        f"expected a segmentation folder at {str(root)!r}: either the ADE20K layout "
        f"(images/{ade}/*.jpg + annotations/{ade}/*.png) or images/ beside one of "
        f"{', '.join(f'{n}/' for n in LABEL_FOLDERS)} with matching file stems"
    )


def _by_stem(folder: Path, files: list[Path], what: str) -> dict[str, Path]:
    keyed: dict[str, Path] = {}
    duplicates = []
    for f in files:
        key = f.relative_to(folder).with_suffix("").as_posix()
        if key in keyed:
            duplicates.append(f"{keyed[key].name} / {f.name}")
        keyed[key] = f
    if duplicates:
        raise UsageError(
            f"several {what} share a stem in {folder}: {listing(duplicates)}; expected one file "
            "per stem"
        )
    return keyed


def find_split(root: str | os.PathLike[str], split: str = "train") -> SegmentationSplit:
    """The image / label-map pairs of the ``"train"`` or ``"val"`` split of ``root``, checked
    from the file headers only: one label map per image, one file per stem, single-channel maps
    of their image's size."""
    root = Path(root)
    layout, image_dir, label_dir = _locate(root, split)
    image_files = find_images(image_dir, IMG_EXTENSIONS)
    label_files = find_images(label_dir, LABEL_EXTENSIONS)
    if not image_files:
        raise UsageError(f"expected image files in {image_dir}, found none")
    images = _by_stem(image_dir, image_files, "images")
    labels = _by_stem(label_dir, label_files, "label maps")
    no_label = sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    if no_label or no_image:
        raise UsageError(
            f"{len(images)} images in {image_dir} but {len(labels)} label maps in {label_dir}, "
            "expected one label map per image with the same stem; images without a label map: "
            f"{listing([images[k].name for k in no_label]) or 'none'}; label maps without an "
            f"image: {listing([labels[k].name for k in no_image]) or 'none'}"
        )
    keys = sorted(images)
    pairs = SegmentationSplit(layout, [images[k] for k in keys], [labels[k] for k in keys])
    _check_headers(pairs)
    logger.info("%s split of %s (%s layout): %d labelled images", split, root, layout, len(keys))
    return pairs


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """Size as displayed (after EXIF orientation, as the model sees the image) and mode."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            return ((h, w) if exif_orientation(img) in (5, 6, 7, 8) else (w, h)), img.mode
    except OSError as err:  # PIL's UnidentifiedImageError is one
        raise UsageError(f"expected an image file, got {path} ({err})") from None


def _check_headers(pairs: SegmentationSplit) -> None:
    """Same size for each pair and single-channel labels, from the file headers only."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        image_heads = list(pool.map(_header, pairs.images))
        label_heads = list(pool.map(_header, pairs.labels))
    sizes, modes = [], []
    for img, lab, (isize, _), (lsize, lmode) in zip(
        pairs.images, pairs.labels, image_heads, label_heads, strict=True
    ):
        if lmode not in SINGLE_CHANNEL_MODES:
            modes.append(f"{lab.name} ({lmode})")
        if isize != lsize:
            sizes.append(f"{img.name} {isize[0]}x{isize[1]} vs {lab.name} {lsize[0]}x{lsize[1]}")
    if modes:
        raise UsageError(
            f"expected single-channel label maps of class indices (modes "
            f"{', '.join(SINGLE_CHANNEL_MODES)}), got {listing(modes)}; convert colour-coded "
            "maps to index maps first"
        )
    if sizes:
        raise UsageError(
            "label maps must have the size of their image as displayed (width x height, after "
            f"the image's EXIF orientation, which the model sees); mismatched: "
            f"{listing(sizes)}"
        )


def load_label_maps(
    labels: Sequence[Path],
    size: int,
    num_classes: int,
    reduce_zero: bool = False,
    progress: bool = True,
) -> Tensor:
    """(N, size, size) uint8 label maps, resized with nearest sampling; an unreadable file or a
    value outside ``[0, num_classes)`` other than :data:`IGNORE` is an error naming each file."""
    out = torch.empty(len(labels), size, size, dtype=torch.uint8)
    bad, unreadable = [], []

    def work(i: int) -> None:
        try:
            with Image.open(labels[i]) as img:
                img.load()
                img = upright(img)  # oriented like its image is, when it says so
                img = img.resize((size, size), Image.Resampling.NEAREST)
                arr = np.asarray(img).astype(np.int64)
        except OSError as e:  # truncated or corrupt: name the file, not just PIL's message
            unreadable.append(f"{labels[i]} ({e})")
            return
        if reduce_zero:  # ADE20K's (as mmseg's): 0 "other" -> IGNORE, IGNORE stays, k -> k - 1
            arr = np.where((arr == 0) | (arr == IGNORE), IGNORE, arr - 1)
        wrong = (arr != IGNORE) & ((arr < 0) | (arr >= num_classes))
        if wrong.any():
            bad.append(f"{Path(labels[i]).name} (values {sorted(set(arr[wrong].tolist()))[:5]})")
            return
        out[i] = torch.from_numpy(arr.astype(np.uint8))

    with ThreadPoolExecutor(max_workers=8) as pool:  # PIL releases the GIL while decoding
        list(
            progress_bar(
                pool.map(work, range(len(labels))),
                total=len(labels),
                desc="label maps",
                disable=not progress,
                leave=False,
            )
        )
    if unreadable:
        raise UsageError(f"expected readable label maps, got {listing(sorted(unreadable))}")
    if bad:
        hint = "" if reduce_zero else " (ADE20K-style maps with 0 = other need --reduce-zero-label)"
        raise UsageError(
            f"expected label values in [0, {num_classes}) or {IGNORE}{hint}; "
            f"out of range: {listing(sorted(bad))}"
        )
    return out
