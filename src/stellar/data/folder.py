"""The image-folder dataset of training and evaluation: one scan, one label rule, one policy
for broken files, and a *view* that turns a decoded image into tensors.

- Labels: when every image of a scanned folder lives in a first-level sub-folder (the
  ImageNet ``train/<class>/*.JPEG`` layout), those sub-folders are the classes, sorted, and an
  image's label is the index of its folder; otherwise (and for file lists) every label is -1.
  :meth:`ImageFolder.require_labels` is the one check that a folder is labelled.
- Broken files (zero-byte, truncated, not an image, not a regular file) never stop a pass:
  the item of such a file is ``None`` (one warning naming it), the loaders'
  collate function leaves it out of its batch, and :attr:`ImageFolder.broken_mask` marks them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from stellar.errors import UsageError
from stellar.images import load_rgb, resize_centre_crop, to_tensor

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


def find_images(root: PathLike, extensions: tuple[str, ...] = IMG_EXTENSIONS) -> dict[Path, int]:
    """The image files under ``root`` (lower-case ``extensions``) and their sizes in bytes,
    sorted by path components.

    Hidden files and folders (names starting with '.') are skipped, and so is anything that is
    not a regular file (a FIFO named ``.jpg`` would block its reader forever); symlinked
    folders are followed once (cycles are cut).
    """
    found: dict[str, int] = {}
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in extensions:
                continue
            full = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):  # vanished, or a link to nothing
                info = os.stat(full)  # follows symlinks
                if stat.S_ISREG(info.st_mode):  # not FIFOs, sockets, devices
                    found[full] = info.st_size
    return {Path(p): found[p] for p in sorted(found, key=lambda p: p.split(os.sep))}


class CanvasView:
    """Training view: longer side resized (PIL bicubic, antialiased) to ``size``, keeping the
    aspect ratio, pasted at the top-left of a zero ``size`` x ``size`` canvas."""

    def __init__(self, size: int = 256) -> None:
        self.size = int(size)

    def __call__(self, path: Path) -> dict[str, torch.Tensor]:
        """``canvas`` (3, S, S) uint8 and ``size`` (2,) int64, the valid (h, w) at the top-left."""
        s = self.size
        img = load_rgb(path)
        w, h = img.size
        k = s / max(w, h)
        nw, nh = max(1, min(s, round(w * k))), max(1, min(s, round(h * k)))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)  # a copy at the same size
        canvas = np.zeros((s, s, 3), dtype=np.uint8)
        canvas[:nh, :nw] = np.asarray(img)
        return {
            "canvas": torch.from_numpy(canvas).permute(2, 0, 1).contiguous(),
            "size": torch.tensor([nh, nw], dtype=torch.int64),
        }


class CentreCropView:
    """Evaluation view: the deterministic "resize, then centre-crop" of the usual protocols.

    The shorter side is resized to ``round(resolution * resize_ratio)`` with PIL bicubic
    (antialiased when downsampling) and the central ``resolution`` square is cropped (256/224
    reproduces the 256 -> 224 ImageNet protocol). With ``crop=False`` the image is resized to
    exactly ``resolution`` squared instead, ignoring its aspect ratio.
    """

    def __init__(self, resolution: int, resize_ratio: float = 256 / 224, crop: bool = True) -> None:
        if int(resolution) < 1:  # else every image would be skipped as broken
            raise ValueError(f"expected resolution >= 1, got {resolution}")
        if not resize_ratio >= 1:  # the crop would be larger than the resized image
            raise ValueError(
                f"expected resize_ratio >= 1 (shorter side / crop), got {resize_ratio}"
            )
        self.resolution, self.resize_ratio, self.crop = int(resolution), float(resize_ratio), crop

    def __call__(self, path: Path) -> dict[str, torch.Tensor]:
        """``image`` (3, R, R) float32 in [0, 1]."""
        r = self.resolution
        if not self.crop:
            img = load_rgb(path).resize((r, r), Image.Resampling.BICUBIC)
        else:
            img = resize_centre_crop(load_rgb(path), r, round(r * self.resize_ratio))
        return {"image": to_tensor(img)}


def _collect(source: PathLike | Sequence[PathLike]) -> tuple[Path | None, list[tuple[str, int]]]:
    """(absolute root or None, (path, size) of each file: paths relative to the root, or
    absolute in a list)."""
    if isinstance(source, str | os.PathLike):
        path = Path(os.path.abspath(source))  # paths stay valid from another working folder
        if path.is_dir():
            return path, [(os.path.relpath(f, path), n) for f, n in find_images(path).items()]
        if not (path.is_file() and path.suffix.lower() in IMG_EXTENSIONS):
            why = "not a folder" if path.exists() else "no such file or folder"
            raise UsageError(f"expected an image file or a folder, got {str(path)!r} ({why})")
        return None, [(str(path), path.stat().st_size)]
    files: list[tuple[str, int]] = []
    for item in source:
        path = Path(os.path.abspath(item))
        if path.is_dir():
            files.extend((str(f), n) for f, n in find_images(path).items())
        elif path.is_file():
            files.append((str(path), path.stat().st_size))
        else:
            raise UsageError(f"expected an image file or a folder, got {str(path)!r}")
    return None, files


def require_classes(classes: list[str], where: str) -> None:
    """A UsageError unless ``classes`` (of the images in ``where``) holds at least 2: a probe
    of one class scores 100 %."""
    if len(classes) < 2:
        found = classes or "none (images outside class sub-folders)"
        raise UsageError(f"expected at least 2 classes (sub-folders) in {where}, found {found}")


class ImageFolder(Dataset):
    """The images of ``source`` (a folder, an image file, or a sequence of files and folders;
    see the module doc) through ``view``, a callable of the file path that makes an item's
    tensors (default: ``CanvasView(canvas_size)``).

    The broken-file marks live in a shared-memory tensor, so the DataLoader workers of one
    process see each other's marks: each broken file warns once per process (a simultaneous
    first failure in two workers may warn twice) and ``broken_mask.sum()`` counts those found
    by all of them. Separate processes (e.g. DDP ranks) each keep their own marks.
    """

    def __init__(
        self, source: PathLike | Sequence[PathLike], canvas_size: int = 256, *, view: Any = None
    ) -> None:
        self.view = view if view is not None else CanvasView(canvas_size)
        self.root, found = _collect(source)
        files = [f for f, _ in found]
        if not files:
            where = f"under {str(source)!r}" if self.root else "among the paths given"
            kinds = " ".join(IMG_EXTENSIONS)
            raise UsageError(f"expected image files ({kinds}) {where}, found none")
        # One numpy buffer instead of a list of str: avoids copy-on-read growth in workers.
        self._paths = np.array([os.fsencode(p) for p in files], dtype=np.bytes_)
        sizes = np.array([n for _, n in found], dtype=np.int64).tobytes()
        # What a resume or a feature folder must find again: the files (relative to the folder,
        # in dataset order) and their sizes (a photo replaced under its name), as scanned.
        self.files_id = hashlib.sha256(self._paths.tobytes() + sizes).hexdigest()[:16]
        self.classes: list[str] = []
        labels = [-1] * len(files)
        if self.root is not None:
            firsts = [p.split(os.sep)[0] if os.sep in p else None for p in files]
            if all(f is not None for f in firsts):
                self.classes = sorted(set(firsts))
                index = {c: k for k, c in enumerate(self.classes)}
                labels = [index[f] for f in firsts]
        self.labels = torch.tensor(labels, dtype=torch.int64)
        # (N,) uint8, 1 for each file found broken so far
        self.broken_mask = torch.zeros(len(files), dtype=torch.uint8)
        try:
            self.broken_mask.share_memory_()
        except RuntimeError:  # no usable shared memory: marks stay per process
            logger.debug("shared memory unavailable; broken-file marks are per worker")

    def __len__(self) -> int:
        return int(self._paths.shape[0])

    def __repr__(self) -> str:  # what messages and logs name: the folder, or the file count
        if self.root is not None:
            return str(self.root)
        return f"{len(self)} image file(s) given (the first: {self.path(0)})"

    def path(self, index: int) -> Path:
        rel = os.fsdecode(self._paths[index])
        return self.root / rel if self.root is not None else Path(rel)

    @property
    def paths(self) -> list[Path]:
        return [self.path(i) for i in range(len(self))]

    def require_labels(self, what: str) -> list[str]:
        """The class names, after checking that every image has one and there are >= 2."""
        where = f"{what} {str(self.root)!r}" if self.root is not None else what
        if not self.classes:
            flat = [p for p in self.paths if self.root is None or p.parent == self.root]
            raise UsageError(
                f"expected labelled images in {where}: one sub-folder per class "
                f"(root/<class>/<image>), but {len(flat)} images have no class folder"
                + (f" (e.g. {flat[0].name})" if flat else "")
            )
        require_classes(self.classes, where)
        return list(self.classes)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        """Item ``index``: the view's tensors, ``label`` and ``index`` (int64 scalars, label -1
        without class folders) and ``path`` (str); ``None`` for a broken file."""
        i = range(len(self))[index]  # IndexError out of range; negative indices count back
        if self.broken_mask[i]:
            return None
        try:
            item: dict[str, Any] = dict(self.view(self.path(i)))
        except Exception as err:  # noqa: BLE001 - any decode failure means "skip this file"
            self.broken_mask[i] = 1
            logger.warning(
                "skipping unreadable image %s (%s: %s)", self.path(i), type(err).__name__, err
            )
            return None
        item["label"] = self.labels[i].clone()
        item["index"] = torch.tensor(i, dtype=torch.int64)
        item["path"] = str(self.path(i))
        return item


class EvalImages(ImageFolder):
    """An :class:`ImageFolder` through a :class:`CentreCropView`: items hold ``image``
    (3, resolution, resolution) float32 in [0, 1]."""

    def __init__(
        self,
        paths_or_root: PathLike | Sequence[PathLike],
        resolution: int,
        resize_ratio: float = 256 / 224,
        crop: bool = True,
    ) -> None:
        view = CentreCropView(resolution, resize_ratio, crop)
        super().__init__(paths_or_root, view=view)
        self.resolution, self.resize_ratio, self.crop = view.resolution, view.resize_ratio, crop


def validate_image_folder(root: PathLike, **kwargs: Any) -> ImageFolder:
    """An :class:`ImageFolder` of ``root`` (``kwargs`` passed on), checked cheaply at start-up:
    at least one of 8 evenly spaced files decodes (the others found broken are marked)."""
    dataset = ImageFolder(root, **kwargs)
    n = len(dataset)
    picks = sorted({int(k) for k in np.linspace(0, n - 1, num=min(8, n))})
    if all(dataset[k] is None for k in picks):
        raise UsageError(
            f"expected readable images under {str(root)!r}: none of {len(picks)} "
            f"probed files decodes (e.g. {dataset.path(picks[0])})"
        )
    return dataset
