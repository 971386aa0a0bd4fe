"""Images in: decoding any file as 8-bit RGB, and the release's preprocessing to a batch.

One decoder for every reader of image files (the image-folder dataset, query images,
:func:`preprocess`) and one geometric transform for evaluation and inference
(:func:`resize_centre_crop`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from stellar.errors import UsageError

# Larger user files are refused with a message: decoding them would take the memory of a
# decompression bomb (a 100 MP photo is 300 MB decoded), and the model sees a 224 px crop.
MAX_PIXELS = 100_000_000

_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}

# What preprocess() takes: a PIL image or a file path, or a list of them.
ImageInput = Image.Image | str | os.PathLike | Sequence[Image.Image | str | os.PathLike]


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


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: transparency (alpha, palette or colour-key) composited on
    white; 16-bit and float single-channel images rescaled (:func:`_to_uint8_gray`)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _to_uint8_gray(img).convert("RGB")
    if mode in _ALPHA_MODES or ("transparency" in img.info and mode in ("1", "L", "P", "RGB")):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # 1, L, P, CMYK, YCbCr, HSV, ... (PIL raises ValueError for modes it cannot convert).
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file fully as 8-bit RGB with EXIF orientation applied (fully: a JPEG
    decoded at a reduced scale would differ from the same photo given as a PIL image). A
    ValueError for anything but a regular file (FIFO, socket, device); PIL's or the OS's error
    for unreadable, truncated or unsupported files."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"{os.fspath(path)!r} is not a regular file")
    with Image.open(path) as img:
        img.load()  # raises on truncated data (LOAD_TRUNCATED_IMAGES is left at False)
        return _to_rgb(upright(img))


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """A user's file as an RGB image (:func:`load_rgb`), or a
    :class:`UsageError`: not a decodable image, or larger than :data:`MAX_PIXELS`."""
    name = Path(path).name
    if not Path(path).is_file():  # before PIL opens it: a FIFO would block the reader
        what = "a folder" if Path(path).is_dir() else "missing or not a regular file"
        raise UsageError(f"expected an image file, got {path} ({what})")
    try:
        with Image.open(path) as probe:  # reads the header only
            w, h = probe.size
    except Image.DecompressionBombError as err:
        raise UsageError(f"{name} is too large to open safely ({err})") from err
    except Exception as err:  # noqa: BLE001 - any failure to read the header means "no image"
        raise UsageError(f"expected an image file (PNG, JPEG, WebP, ...), got {name}") from err
    if w * h > MAX_PIXELS:
        raise UsageError(
            f"{name} is {w}x{h} pixels; expected images up to "
            f"{MAX_PIXELS // 1_000_000} megapixels: downscale it first"
        )
    try:
        return load_rgb(path)
    except Exception as err:  # noqa: BLE001 - a truncated or unsupported file is bad input
        raise UsageError(f"{name} could not be decoded as an image ({err})") from err


def upright(img: Image.Image) -> Image.Image:
    """``img`` as displayed: its EXIF orientation applied (itself when it has none, or when
    the EXIF block is unreadable: PIL's ``exif_transpose`` would raise on it)."""
    return ImageOps.exif_transpose(img) if exif_orientation(img) in range(2, 9) else img


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored; 5-8 swap width and height), 1 when unreadable."""
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not discard the pixels
        return 1


def resize_centre_crop(
    img: Image.Image, resolution: int, short_side: int | None = None
) -> Image.Image:
    """Resize the shorter side to ``short_side`` (default ``resolution``; PIL bicubic), then
    crop the central ``resolution`` square."""
    s = max(resolution, short_side or resolution)
    w, h = img.size
    k = s / min(w, h)
    size = (max(resolution, round(w * k)), max(resolution, round(h * k)))
    img = img.resize(size, Image.Resampling.BICUBIC)  # a copy when the size is unchanged
    left, top = round((size[0] - resolution) / 2), round((size[1] - resolution) / 2)
    return img.crop((left, top, left + resolution, top + resolution))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


def preprocess(images: ImageInput, resolution: int) -> torch.Tensor:
    """PIL images or image files (any mode and size) -> a (B, 3, R, R) batch in [0, 1].

    The release's preprocessing: RGB, the shorter side resized to ``resolution`` with bicubic
    interpolation, the central square cropped; the ImageNet normalisation is left to the model.

    Raises:
        TypeError: for anything but a PIL image, a path or a list of them.
        ValueError: a path that is not a decodable image file.
    """
    single = isinstance(images, (Image.Image, str, os.PathLike))
    items = [images] if single else list(images) if isinstance(images, (list, tuple)) else None
    if items is None:
        raise TypeError(
            f"expected a PIL image, an image file path or a list of them, got "
            f"{type(images).__name__}"
        )
    if not items:
        raise ValueError("expected at least one image, got an empty list")
    batch = []
    for item in items:
        if isinstance(item, Image.Image):
            img = _to_rgb(upright(item))
        elif isinstance(item, (str, os.PathLike)):
            img = open_image(item)
        else:
            raise TypeError(
                f"expected PIL images or image file paths, got {type(item).__name__}; a tensor "
                "batch (B, 3, H, W) in [0, 1] goes to encode() directly"
            )
        batch.append(to_tensor(resize_centre_crop(img, resolution)))
    return torch.stack(batch)
