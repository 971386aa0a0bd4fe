"""Overrides that shrink the ``cpu-smoke`` preset to a run of a few seconds (train tests), and
a small photo folder with chosen unreadable files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

TINY = [
    "data.scenes_length=64",
    "batch_size=4",
    "augment.n_local=2",
    "augment.n_masked=2",
    "tensorboard=false",
    "progress=false",
]


def photo_folder(root: Path, count: int, broken: Iterable[int] = ()) -> list[str]:
    """``count`` small PNGs in ``root`` (dataset index = name order); the files at the
    ``broken`` indices hold bytes no decoder reads. Returns the overrides that train on it."""
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (48, 40), (10 * i, 100, 200)).save(root / f"{i:02d}.png")
    for i in broken:
        (root / f"{i:02d}.png").write_bytes(b"not an image")
    return ["data.source=folder", f"data.root={root}", "data.canvas_size=72"]
