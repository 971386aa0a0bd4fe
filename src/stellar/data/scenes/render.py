"""Rendering one concept scene: a textured background in muted colours and 1..``max_objects``
shaded, possibly occluding objects, each keeping ``MIN_VISIBLE`` of its area in view so that
every label refers to something visible.

Everything is a pure function of ``(seed, split, index)``: a per-item numpy ``Generator`` is
seeded from a ``SeedSequence`` of those three integers, so an item is bit-identical regardless
of access order or DataLoader worker.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import torch

from stellar.data.scenes.geometry import (
    SHAPE_AREA,
    SHAPE_EXTENT,
    SHAPES,
    shape_sdf,
    soft_coverage,
)

COLOURS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "cyan",
    "blue",
    "purple",
    "magenta",
    "white",
    "black",
)
# Saturated or extreme colours; backgrounds are drawn muted (low saturation, mid value) so that
# objects always stand out from them.
COLOUR_RGB: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.10, 0.10),
    (1.00, 0.55, 0.00),
    (0.95, 0.90, 0.10),
    (0.10, 0.70, 0.15),
    (0.10, 0.85, 0.90),
    (0.10, 0.25, 0.95),
    (0.55, 0.15, 0.80),
    (0.95, 0.25, 0.75),
    (0.97, 0.97, 0.97),
    (0.05, 0.05, 0.05),
)
FILLS: tuple[str, ...] = ("solid", "striped", "dotted")
BACKGROUNDS: tuple[str, ...] = ("solid", "gradient", "noise", "stripes")
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

MIN_VISIBLE = 0.3
"""Fraction of an object's own (in-frame) pixel area that must stay unoccluded."""

MIN_VISIBLE_PIXELS = 12
"""Absolute visible-pixel floor (objects smaller than this must stay fully visible)."""

MIN_SIZE = 16
SCALE_RANGE = (0.12, 0.28)
"""Object radius R as a fraction of the image side, (low, high)."""
MAX_TRIES = 24
"""Placement attempts per object; radii shrink every 4 failed attempts."""


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.random(3)
    rgb = colorsys.hsv_to_rgb(float(h), 0.35 * float(s), 0.3 + 0.4 * float(v))
    return np.asarray(rgb, dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) low-frequency value noise in [0, 1]: two octaves of smoothly upsampled knots."""
    field = np.zeros((size, size), dtype=np.float32)
    base = int(rng.integers(3, 6))
    for knots, weight in ((base, 0.7), (2 * base + 1, 0.3)):
        grid = rng.random((knots, knots), dtype=np.float32)
        # each pixel centre's left knot and smooth-step weight towards the next
        pos = (np.arange(size, dtype=np.float32) + 0.5) * np.float32((knots - 1) / size)
        i0 = np.minimum(pos.astype(np.int64), knots - 2)
        f = pos - i0
        f = f * f * (3.0 - 2.0 * f)
        # Separable interpolation by gathers (rows, then columns); a BLAS matmul here would
        # be as cheap but spins up threads inside DataLoader workers.
        rows = grid[i0] + f[:, None] * (grid[i0 + 1] - grid[i0])
        field += weight * (rows[:, i0] + f[None, :] * (rows[:, i0 + 1] - rows[:, i0]))
    lo, hi = field.min(), field.max()
    return (field - lo) / max(float(hi - lo), 1e-6)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
    """(size, size, 3) float32 background and its kind index into ``BACKGROUNDS``."""
    kind = int(rng.integers(len(BACKGROUNDS)))
    c0 = _muted_colour(rng)
    c1 = _muted_colour(rng)
    coords = np.arange(size, dtype=np.float32) + 0.5 - 0.5 * size
    if kind == 0:
        return np.broadcast_to(c0, (size, size, 3)).copy(), kind
    if kind == 1:
        theta = rng.random() * 2.0 * math.pi
        ct, st = math.cos(theta), math.sin(theta)
        span = 0.5 * size * (abs(ct) + abs(st))
        t = (coords[None, :] * ct + coords[:, None] * st) / (2.0 * span) + 0.5
    elif kind == 2:
        t = _smooth_noise(rng, size)
    else:
        theta = rng.random() * math.pi
        # At least 4 px so small images do not alias the stripes into moire.
        period = max(4.0, size * (0.08 + 0.17 * rng.random()))
        proj = coords[None, :] * math.cos(theta) + coords[:, None] * math.sin(theta)
        phase = proj / period - np.floor(proj / period)
        t = soft_coverage((np.abs(phase - 0.5) - 0.25) * period)
    t = t.astype(np.float32)
    return c0 + t[..., None] * (c1 - c0), kind


def _pattern_colour(rgb: np.ndarray) -> np.ndarray:
    """A shade of ``rgb`` for stripes/dots: darker for bright colours, lighter for dark ones."""
    luma = float(rgb @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32))
    target = 0.0 if luma > 0.45 else 1.0
    return (0.5 * rgb + 0.5 * target).astype(np.float32)


def _fill_pattern(fill: int, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray | None:
    """Coverage (h, w) of the pattern colour inside an object, None for a solid fill."""
    if fill == 0:
        return None
    if fill == 1:
        period = max(3.0, 0.5 * radius)
        phase = u / period - np.floor(u / period)
        return soft_coverage((np.abs(phase - 0.5) - 0.25) * period)
    period = max(4.0, 0.6 * radius)
    cu = u - period * np.round(u / period)
    cv = v - period * np.round(v / period)
    return soft_coverage(np.hypot(cu, cv) - 0.28 * period)


def render_scene(
    seed: int,
    index: int,
    size: int = 64,
    *,
    split: str = "train",
    max_objects: int = 4,
) -> dict[str, torch.Tensor]:
    """Render one concept scene; a pure function of ``(seed, split, index, size, max_objects)``.

    The object count is drawn uniformly from 1..max_objects; an object that cannot be placed
    visibly within ``MAX_TRIES`` placements is dropped, so ``count`` can rarely be lower than
    drawn, never below 1. Returns a dict of tensors, K = max_objects:
        ``image`` (3, size, size) float32 in [0, 1] (exactly ``uint8 / 255``);
        ``image_uint8`` (3, size, size) uint8;
        ``label`` () int64: shape class of the object with the largest visible area
        (the first on ties); ``colour`` () int64: that object's colour class;
        ``count`` () int64;
        ``shapes`` (len(SHAPES),) and ``colours`` (len(COLOURS),) float32 multi-hot;
        ``instance_mask`` (size, size) int64, 0 background, 1..count in drawing order;
        ``semantic_mask`` (size, size) int64, 0 background, 1 + shape class;
        ``object_shapes``, ``object_colours``, ``object_fills`` (K,) int64, -1 padded;
        ``object_areas`` (K,) int64 visible pixels, 0 padded;
        ``background`` () int64 index into ``BACKGROUNDS``.
    """
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size must be an int >= {MIN_SIZE}, got {size!r}")
    lo_scale, hi_scale = SCALE_RANGE
    size, max_objects = int(size), int(max_objects)
    # SeedSequence itself refuses negative seeds and indices.
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], int(index)]))

    img, bg_kind = _background(rng, size)
    n_draw = int(rng.integers(1, max_objects + 1))
    inst = np.zeros((size, size), dtype=np.int64)
    visible = np.zeros(0, dtype=np.int64)  # current unoccluded pixels of each placed object
    own = np.zeros(0, dtype=np.int64)  # pixels of each object when placed (its own area)
    placed: list[tuple[int, int, int, float, tuple[slice, slice], np.ndarray, np.ndarray]] = []
    pix = np.arange(size, dtype=np.float32) + 0.5

    for _ in range(n_draw):
        shape = int(rng.integers(len(SHAPES)))
        colour = int(rng.integers(len(COLOURS)))
        fill = int(rng.integers(len(FILLS)))
        fallback = None
        for attempt in range(MAX_TRIES):
            shrink = 0.9 ** (attempt // 4)
            radius = size * (lo_scale + (hi_scale - lo_scale) * rng.random()) * shrink
            theta = rng.random() * 2.0 * math.pi
            ext = SHAPE_EXTENT[shape] * radius
            # Centres keep the object (almost) inside the frame.
            margin = 0.9 * ext
            # Python floats keep the grids float32 (a numpy float64 scalar would upcast).
            cx, cy = (margin + (size - 2.0 * margin) * rng.random(2)).tolist()
            x0, x1 = max(0, int(cx - ext) - 1), min(size, int(cx + ext) + 2)
            y0, y1 = max(0, int(cy - ext) - 1), min(size, int(cy + ext) + 2)
            dx = pix[x0:x1] - cx
            dy = pix[y0:y1] - cy
            ct, st = math.cos(theta), math.sin(theta)
            u = dx[None, :] * ct + dy[:, None] * st
            v = dy[:, None] * ct - dx[None, :] * st
            sdf = shape_sdf(shape, u, v, radius)
            inside = sdf < 0.0
            n_own = int(inside.sum())
            if n_own == 0:
                continue
            region = (slice(y0, y1), slice(x0, x1))
            candidate = (shape, colour, fill, radius, region, sdf, np.stack([u, v]))
            if not placed and (fallback is None or n_own > fallback[1]):
                fallback = (candidate, n_own)
            # Reject placements whose rasterisation lost much of the shape (frame clipping).
            if n_own < 0.5 * SHAPE_AREA[shape] * radius * radius:
                continue
            covered = np.bincount(inst[region][inside], minlength=len(placed) + 1)[1:]
            new_visible = visible - covered
            # every placed object keeps MIN_VISIBLE of its own pixels, or all of them if few
            if np.any(
                new_visible < np.maximum(MIN_VISIBLE * own, np.minimum(MIN_VISIBLE_PIXELS, own))
            ):
                continue
            break
        else:
            if fallback is None:  # the object is dropped
                continue
            # The first object has nothing to occlude, so only rasterisation can reject it;
            # keep its best attempt so every scene has at least one object.
            candidate, n_own = fallback
            new_visible = visible
        inst[candidate[4]][candidate[5] < 0.0] = len(placed) + 1
        visible = np.append(new_visible, n_own)
        own = np.append(own, n_own)
        placed.append(candidate)

    for _shape, colour, fill, radius, region, sdf, uv in placed:
        rgb = np.asarray(COLOUR_RGB[colour], dtype=np.float32)
        alpha = soft_coverage(sdf)[..., None]
        pattern = _fill_pattern(fill, uv[0], uv[1], radius)
        if pattern is not None:
            rgb = rgb + pattern[..., None] * (_pattern_colour(rgb) - rgb)
        view = img[region]
        view += alpha * (rgb - view)

    count = len(placed)
    k = max_objects
    obj = np.full((3, k), -1, dtype=np.int64)
    for i, (shape, colour, fill, *_rest) in enumerate(placed):
        obj[:, i] = (shape, colour, fill)
    areas = np.zeros(k, dtype=np.int64)
    areas[:count] = np.bincount(inst.ravel(), minlength=count + 1)[1:]
    largest = int(np.argmax(areas[:count]))
    main_shape, main_colour = int(obj[0, largest]), int(obj[1, largest])
    shape_lut = np.concatenate([[0], obj[0, :count] + 1])
    shapes_mh = np.zeros(len(SHAPES), dtype=np.float32)
    shapes_mh[obj[0, :count]] = 1.0
    colours_mh = np.zeros(len(COLOURS), dtype=np.float32)
    colours_mh[obj[1, :count]] = 1.0

    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    u8 = np.ascontiguousarray(u8)
    return {
        # Float conversion in numpy: the same IEEE float32 division as torch, without torch's
        # intra-op thread pool (costly in a busy main process).
        "image": torch.from_numpy(np.divide(u8, np.float32(255.0), dtype=np.float32)),
        "image_uint8": torch.from_numpy(u8),
        "label": torch.tensor(main_shape, dtype=torch.int64),
        "colour": torch.tensor(main_colour, dtype=torch.int64),
        "count": torch.tensor(count, dtype=torch.int64),
        "shapes": torch.from_numpy(shapes_mh),
        "colours": torch.from_numpy(colours_mh),
        "instance_mask": torch.from_numpy(inst),
        "semantic_mask": torch.from_numpy(shape_lut[inst]),
        "object_shapes": torch.from_numpy(obj[0].copy()),
        "object_colours": torch.from_numpy(obj[1].copy()),
        "object_fills": torch.from_numpy(obj[2].copy()),
        "object_areas": torch.from_numpy(areas),
        "background": torch.tensor(bg_kind, dtype=torch.int64),
    }
