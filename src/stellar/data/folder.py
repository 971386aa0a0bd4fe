"""A folder of images as fixed-size uint8 canvases, robust to broken files.

Every image is decoded with PIL, converted to RGB, resized (bicubic, antialiased) so that its
longer side equals ``canvas_size`` and placed at the top-left of a zero canvas. Batches of
canvases can then be collated and cropped on the device (see :mod:`stellar.data.augment`).

Broken files (zero-byte, truncated, not an image, unsupported mode) never stop an epoch: the
first failure of a file logs one warning naming it, the file is remembered as broken and the
next loadable index, ``(i + 1) % len``, is delivered instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

__all__ = [
    "IMG_EXTENSIONS",
    "ImageFolder",
    "exif_orientation",
    "load_rgb",
    "scan_images",
    "upright",
    "validate_image_folder",
]

logger = logging.getLogger(__name__)

IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
    ".gif",
    ".ppm",
)

_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


def _normalise_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = tuple(sorted({("." + e.lower().lstrip(".")) for e in extensions if e.strip(".")}))
    if not exts:
        raise ValueError(f"expected at least one file extension such as '.jpg', got {extensions!r}")
    return exts


def _to_uint8_gray(img: Image.Image) -> Image.Image:
    """High-bit-depth single channel image (I;16*, I, F) scaled (not clipped) to mode L."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        # Full 16-bit range maps onto 0..255 (PIL's own convert("L") would clip at 255).
        lo, hi = 0.0, 65535.0
    else:
        lo, hi = float(a.min()), float(a.max())
        if img.mode == "I" and lo >= 0 and hi <= 65535:
            lo, hi = 0.0, 65535.0  # int32 images are 16-bit data in practice (PNG, PPM, TIFF)
        elif img.mode == "F" and lo >= 0 and hi <= 1:
            lo, hi = 0.0, 1.0
        # Otherwise: unknown range, stretch min..max.
    span = max(hi - lo, 1e-12)
    out = np.clip((a.astype(np.float64) - lo) * (255.0 / span), 0, 255)
    return Image.fromarray(np.round(out).astype(np.uint8))  # 2-D uint8 -> mode L


def _composite_on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Transparency (alpha channels, palette or colour-key ``transparency``) is composited on a
    white background, so fully transparent pixels become white whatever colour they stored.
    16-bit and float single-channel images are rescaled to 0..255 (see :func:`_to_uint8_gray`).
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _to_uint8_gray(img).convert("RGB")
    if mode in _ALPHA_MODES or ("transparency" in img.info and mode in ("1", "L", "P", "RGB")):
        return _composite_on_white(img)
    # 1, L, P, CMYK, YCbCr, HSV, ... (PIL raises ValueError for modes it cannot convert).
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike[str], max_side: int | None = None) -> Image.Image:
    """Decode an image file fully as 8-bit RGB with EXIF orientation applied.

    Args:
        path: the file.
        max_side: when given, JPEG decoding may downscale by a power of two (DCT scaling)
            while keeping both sides >= ``max_side``; a cheap speed-up for large photos.

    Returns:
        A loaded RGB PIL image.

    Raises:
        Any PIL / OS error for unreadable, truncated or unsupported files.
    """
    with Image.open(path) as img:
        if max_side is not None and img.format == "JPEG":
            img.draft(None, (max_side, max_side))
        img.load()  # raises on truncated data (LOAD_TRUNCATED_IMAGES is left at False)
        return _to_rgb(upright(img))


def upright(img: Image.Image) -> Image.Image:
    """``img`` as displayed: its EXIF orientation applied (itself when it has none)."""
    return ImageOps.exif_transpose(img) if exif_orientation(img) in range(2, 9) else img


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored; 5-8 swap width and height), 1 when unreadable."""
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not discard the pixels
        return 1


def scan_images(root: Path, extensions: tuple[str, ...]) -> list[str]:
    """Relative paths of the image files under ``root``, sorted by path components.

    Hidden files and folders (names starting with '.') are skipped; symlinked folders are
    followed once (cycles are cut).
    """
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    found.sort(key=lambda p: p.split(os.sep))
    return found


class ImageFolder(Dataset):
    """Images found recursively under ``root``, delivered as fixed-size uint8 canvases.

    Labels: when every image lives in a sub-folder of ``root`` (the ImageNet
    ``train/<class>/*.JPEG`` layout), ``classes`` holds the sorted names of the first-level
    sub-folders that contain images and ``label`` is the index of the image's first-level
    folder; otherwise ``classes`` is empty and every label is -1. Labels are never required.

    Decoding: PIL, converted to RGB for every mode (alpha and transparency composited on
    white; CMYK via PIL; 16-bit images rescaled to 8 bit, not clipped), EXIF orientation
    applied, then resized with PIL bicubic (antialiased) so that the longer side equals
    ``canvas_size``, keeping the aspect ratio, and pasted at the top-left of a zero canvas.

    Broken files: on the first failure of file ``j`` one warning naming it is logged, ``j`` is
    marked broken, and index ``(j + 1) % len`` is tried next (at most ``max_attempts``
    files); a ``ValueError`` is raised if none of them loads. The broken-file marks live in a
    shared-memory tensor, so the DataLoader workers of one process (forked or spawned) see
    each other's marks: each broken file warns once per training process (a simultaneous
    first failure in two workers may warn twice) and ``skipped`` counts the broken files
    found by all of them. Separate processes (e.g. DDP ranks) each keep their own marks.

    Args:
        root: folder to scan recursively.
        canvas_size: side of the square output canvas.
        extensions: file extensions to accept (case-insensitive).
        max_attempts: how many consecutive files to try before giving up on an index.
        jpeg_draft: let the JPEG decoder downscale large photos by a power of two first
            (both sides stay >= ``canvas_size``); faster, marginally softer.

    Raises:
        ValueError: ``root`` is not a folder or holds no file with an image extension.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        canvas_size: int = 256,
        extensions: Iterable[str] = IMG_EXTENSIONS,
        max_attempts: int = 32,
        jpeg_draft: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"expected a folder of images, got {str(self.root)!r} (not a folder)")
        if int(canvas_size) < 1:
            raise ValueError(f"expected canvas_size >= 1, got {canvas_size}")
        if int(max_attempts) < 1:
            raise ValueError(f"expected max_attempts >= 1, got {max_attempts}")
        self.canvas_size = int(canvas_size)
        self.extensions = _normalise_extensions(extensions)
        self.max_attempts = int(max_attempts)
        self.jpeg_draft = bool(jpeg_draft)

        rel = scan_images(self.root, self.extensions)
        if not rel:
            raise ValueError(
                f"expected image files ({' '.join(self.extensions)}) under {str(self.root)!r}, "
                "found none"
            )
        # One numpy buffer instead of a list of str: avoids copy-on-read growth in workers.
        self._paths = np.array([os.fsencode(p) for p in rel], dtype=np.bytes_)
        parts = [p.split(os.sep) for p in rel]
        if all(len(p) > 1 for p in parts):
            self.classes: list[str] = sorted({p[0] for p in parts})
            index = {c: k for k, c in enumerate(self.classes)}
            labels = [index[p[0]] for p in parts]
        else:
            self.classes = []
            labels = [-1] * len(rel)
        self.class_to_idx: dict[str, int] = {c: k for k, c in enumerate(self.classes)}
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self._broken = torch.zeros(len(rel), dtype=torch.uint8)
        try:
            self._broken.share_memory_()
        except RuntimeError:  # no usable shared memory: marks stay per process
            logger.debug("shared memory unavailable; broken-file marks are per worker")

    def __len__(self) -> int:
        return int(self._paths.shape[0])

    def path(self, index: int) -> Path:
        """Absolute path of file ``index``."""
        return self.root / os.fsdecode(self._paths[index])

    @property
    def skipped(self) -> int:
        """Number of files found broken so far (by this process and its workers)."""
        return int(self._broken.sum())

    @property
    def broken_files(self) -> list[Path]:
        """Paths of the files found broken so far."""
        return [self.path(int(i)) for i in torch.nonzero(self._broken).flatten()]

    def _canvas(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.canvas_size
        img = load_rgb(self.path(index), max_side=s if self.jpeg_draft else None)
        w, h = img.size
        k = s / max(w, h)
        nw, nh = max(1, min(s, round(w * k))), max(1, min(s, round(h * k)))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        canvas = np.zeros((s, s, 3), dtype=np.uint8)
        canvas[:nh, :nw] = np.asarray(img)
        return (
            torch.from_numpy(canvas).permute(2, 0, 1).contiguous(),
            torch.tensor([nh, nw], dtype=torch.int64),
        )

    def _mark_broken(self, index: int, err: BaseException) -> None:
        if not self._broken[index]:
            self._broken[index] = 1
            logger.warning(
                "skipping unreadable image %s (%s: %s); substituting the next loadable file",
                self.path(index),
                type(err).__name__,
                err,
            )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Sample ``index`` (or the next loadable one).

        Returns:
            dict with ``canvas`` (3, S, S) uint8, ``size`` (2,) int64 valid (h, w) at the
            top-left, ``label`` () int64 (-1 without class folders) and ``index`` () int64,
            the index of the file actually delivered.
        """
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"index {index} out of range for {n} images")
        i %= n
        attempts = min(self.max_attempts, n)
        for step in range(attempts):
            j = (i + step) % n
            if self._broken[j]:
                continue
            try:
                canvas, size = self._canvas(j)
            except Exception as err:  # noqa: BLE001 - any decode failure means "skip this file"
                self._mark_broken(j, err)
                continue
            return {
                "canvas": canvas,
                "size": size,
                "label": self.labels[j].clone(),
                "index": torch.tensor(j, dtype=torch.int64),
            }
        raise ValueError(
            f"none of the {attempts} files from index {i} ({self.path(i)}) under "
            f"{str(self.root)!r} could be decoded as an image; expected readable image files"
        )

    def check(self, index: int) -> bool:
        """Fully decode file ``index``; mark it broken (one warning) if that fails."""
        if self._broken[index]:
            return False
        try:
            load_rgb(self.path(index))
        except Exception as err:  # noqa: BLE001
            self._mark_broken(index, err)
            return False
        return True

    def scan_corrupt(self, num_threads: int = 8) -> list[Path]:
        """Decode every file once (threads; PIL releases the GIL) and return the broken ones.

        Optional: costs a full pass over the data. Found files are marked, so training skips
        them without retrying.
        """
        with ThreadPoolExecutor(max_workers=max(1, int(num_threads))) as pool:
            list(pool.map(self.check, range(len(self))))
        return self.broken_files

    def validate(self, probe: int = 8) -> None:
        """Cheap pre-training check: at least one of ``probe`` evenly spaced files decodes.

        Raises:
            ValueError: none of the probed files is a readable image.
        """
        n = len(self)
        picks = sorted({int(k) for k in np.linspace(0, n - 1, num=min(max(1, probe), n))})
        if not any(self.check(k) for k in picks):
            raise ValueError(
                f"expected readable images under {str(self.root)!r}: none of {len(picks)} "
                f"probed files decodes (e.g. {self.path(picks[0])})"
            )

    def extra_repr(self) -> str:
        return f"root={str(self.root)!r}, n={len(self)}, classes={len(self.classes)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def validate_image_folder(
    root: str | os.PathLike[str], probe: int = 8, **kwargs: Any
) -> ImageFolder:
    """Build an :class:`ImageFolder` and check that it holds decodable images.

    Args:
        root: folder to scan.
        probe: number of evenly spaced files to try decoding.
        **kwargs: forwarded to :class:`ImageFolder`.

    Returns:
        The dataset, ready to use.

    Raises:
        ValueError: no image file, or none of the probed files decodes.
    """
    dataset = ImageFolder(root, **kwargs)
    dataset.validate(probe)
    return dataset
