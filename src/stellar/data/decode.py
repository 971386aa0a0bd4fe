"""Decoding any image file as 8-bit RGB, upright by its EXIF orientation.

One decoder for every reader of image files (the image-folder dataset, segmentation label
maps, query images): PIL, every mode converted to RGB (alpha and transparency composited on
white; CMYK via PIL; 16-bit and float images rescaled to 8 bit, not clipped), EXIF
orientation applied. Only regular files are opened, so a FIFO or a device that happens to
carry an image extension fails at once instead of blocking the reader.
"""

from __future__ import annotations

import os
import stat

import numpy as np
from PIL import Image, ImageOps

__all__ = ["exif_orientation", "load_rgb", "upright"]

_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


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
        ValueError for anything that is not a regular file (FIFO, socket, device); any PIL /
        OS error for unreadable, truncated or unsupported files.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"{os.fspath(path)!r} is not a regular file")
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
