"""Evaluation images: the deterministic "resize, then centre-crop" view of a folder or file list.

Each image is decoded with :func:`stellar.data.folder.load_rgb` (any PIL mode to RGB, EXIF
orientation applied), its shorter side resized to ``round(resolution * resize_ratio)`` with PIL
bicubic (antialiased when downsampling) and the central ``resolution x resolution`` square
cropped, as in the usual ImageNet evaluation (256 -> 224). With ``crop=False`` the image is
instead resized to exactly ``resolution x resolution``, ignoring its aspect ratio (nothing is
cut off, shapes are stretched).

Broken files never stop a pass: the item of a file that fails to decode is ``None`` (one
warning naming the file, per process), and the collate function of :func:`make_loader` drops
it, so a batch may hold fewer images than ``batch_size`` (or none).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from stellar.data.folder import IMG_EXTENSIONS, load_rgb, scan_images

__all__ = ["EvalImages", "collate_images", "decodable_batches", "find_images", "make_loader"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def find_images(root: PathLike, extensions: Iterable[str] = IMG_EXTENSIONS) -> list[Path]:
    """Image files under ``root``, recursively, sorted by path components.

    Hidden files and folders (names starting with ``.``) are skipped; symlinked folders are
    followed once (cycles are cut), as :class:`~stellar.data.folder.ImageFolder` does.
    """
    exts = tuple(e.lower() for e in extensions)
    return [Path(root) / rel for rel in scan_images(Path(root), exts)]


def _labels_from_folders(root: Path, files: list[Path]) -> tuple[list[str], list[int]]:
    """ImageNet layout: every file in a first-level class folder -> (classes, labels)."""
    parts = [f.relative_to(root).parts for f in files]
    if not all(len(p) > 1 for p in parts):
        return [], [-1] * len(files)
    classes = sorted({p[0] for p in parts})
    index = {c: k for k, c in enumerate(classes)}
    return classes, [index[p[0]] for p in parts]


class EvalImages(Dataset):
    """Images as deterministic ``(3, resolution, resolution)`` float tensors in [0, 1].

    Args:
        paths_or_root: a folder (scanned recursively; when every image sits in a first-level
            sub-folder, those folders are the classes, sorted, as in ImageNet; otherwise
            labels are -1), a single image file, or a sequence of files and/or folders
            (folders expanded recursively; labels -1).
        resolution: side of the output square.
        resize_ratio: the shorter side is first resized to ``round(resolution * resize_ratio)``
            (256/224 reproduces the 256 -> 224 protocol; 1.0 keeps the largest centre square).
        crop: centre-crop (default) or, when False, resize straight to ``resolution`` squared.
        extensions: accepted file extensions when scanning folders.

    Raises:
        ValueError: no image file was found, a path does not exist, or a size is invalid.
    """

    def __init__(
        self,
        paths_or_root: PathLike | Sequence[PathLike],
        resolution: int,
        resize_ratio: float = 256 / 224,
        crop: bool = True,
        extensions: Iterable[str] = IMG_EXTENSIONS,
    ) -> None:
        if int(resolution) < 1:
            raise ValueError(f"expected resolution >= 1, got {resolution}")
        if crop and resize_ratio < 1:
            raise ValueError(
                f"expected resize_ratio >= 1 with crop=True (the crop must fit), got {resize_ratio}"
            )
        self.resolution = int(resolution)
        self.resize_ratio = float(resize_ratio)
        self.crop = bool(crop)
        exts = tuple(e.lower() for e in extensions)
        self.classes: list[str] = []
        if isinstance(paths_or_root, str | os.PathLike) and Path(paths_or_root).is_dir():
            self.root: Path | None = Path(paths_or_root)
            files = find_images(self.root, exts)
            self.classes, labels = _labels_from_folders(self.root, files)
        else:
            self.root = None
            items = (
                [paths_or_root] if isinstance(paths_or_root, str | os.PathLike) else paths_or_root
            )
            files = []
            for item in items:
                path = Path(item)
                if path.is_dir():
                    files.extend(find_images(path, exts))
                elif path.is_file():
                    files.append(path)
                else:
                    raise ValueError(f"expected an image file or a folder, got {str(path)!r}")
            labels = [-1] * len(files)
        if not files:
            raise ValueError(
                f"expected image files ({' '.join(exts)}) in {paths_or_root!s}, found none"
            )
        self.paths: list[Path] = files
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def short_side(self) -> int:
        """The shorter side after the first resize (``crop=True``)."""
        return max(self.resolution, round(self.resolution * self.resize_ratio))

    def load(self, index: int) -> Tensor:
        """Decode and transform file ``index`` -> (3, R, R) float32 in [0, 1]; raises on failure."""
        r = self.resolution
        if not self.crop:
            img = load_rgb(self.paths[index], max_side=r)
            if img.size != (r, r):
                img = img.resize((r, r), Image.Resampling.BICUBIC)
        else:
            s = self.short_side
            img = load_rgb(self.paths[index], max_side=s)
            w, h = img.size
            k = s / min(w, h)
            size = (max(r, round(w * k)), max(r, round(h * k)))
            if size != (w, h):
                img = img.resize(size, Image.Resampling.BICUBIC)
            left, top = round((size[0] - r) / 2), round((size[1] - r) / 2)
            img = img.crop((left, top, left + r, top + r))
        array = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        """Item ``index``: ``image`` (3, R, R) float32, ``label`` and ``index`` (int64 scalars),
        ``path`` (str); ``None`` when the file cannot be decoded (warned once)."""
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        i %= len(self)
        try:
            image = self.load(i)
        except Exception as err:  # noqa: BLE001 - any decode failure means "skip this file"
            if i not in self._warned:
                self._warned.add(i)
                logger.warning(
                    "skipping unreadable image %s (%s: %s)", self.paths[i], type(err).__name__, err
                )
            return None
        return {
            "image": image,
            "label": self.labels[i].clone(),
            "index": torch.tensor(i, dtype=torch.int64),
            "path": str(self.paths[i]),
        }

    def __repr__(self) -> str:
        src = self.root if self.root is not None else f"{len(self)} files"
        return (
            f"{type(self).__name__}({src}, n={len(self)}, resolution={self.resolution}, "
            f"resize_ratio={self.resize_ratio:.4g}, crop={self.crop})"
        )


def collate_images(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack the decodable items of a batch, dropping the ``None`` of broken files.

    Returns:
        ``image`` (B, 3, R, R), ``label`` (B,), ``index`` (B,) and ``path`` (list of B str);
        B may be 0 (then ``image`` is an empty (0, 3, 0, 0) tensor).
    """
    good = [it for it in items if it is not None]
    if not good:
        return {
            "image": torch.empty(0, 3, 0, 0),
            "label": torch.empty(0, dtype=torch.int64),
            "index": torch.empty(0, dtype=torch.int64),
            "path": [],
        }
    return {
        "image": torch.stack([it["image"] for it in good]),
        "label": torch.stack([it["label"] for it in good]),
        "index": torch.stack([it["index"] for it in good]),
        "path": [it["path"] for it in good],
    }


def make_loader(
    dataset: Dataset, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A sequential (unshuffled) loader that drops broken files (see :func:`collate_images`)."""
    if int(batch_size) < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    if int(num_workers) < 0:
        raise ValueError(f"expected num_workers >= 0, got {num_workers}")
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=False,
        num_workers=int(num_workers),
        collate_fn=collate_images,
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
    """The non-empty batches of :func:`make_loader`, under a tqdm bar.

    Raises:
        ValueError: once the loader is exhausted, if no image of ``dataset`` could be decoded.
    """
    loader = make_loader(dataset, batch_size, num_workers, pin_memory=pin_memory)
    found = False
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        if batch["image"].shape[0] == 0:
            continue
        found = True
        yield batch
    if not found:
        raise ValueError(f"expected at least one decodable image in {dataset!r}, found none")
