"""Procedural "concept scenes": synthetic images whose "what" and "where" are known exactly.

Each image is a textured background (solid, linear gradient, smooth noise or stripes in muted
colours) with 1..``max_objects`` objects drawn on top in order, each a shape from ``SHAPES`` in a
colour from ``COLOURS`` with a fill from ``FILLS``, at random position, scale and rotation.
Objects are rendered from signed distance functions evaluated on the pixel grid (anti-aliased
by a one-pixel smooth edge), and every placed object keeps at least ``MIN_VISIBLE`` of its own
area unoccluded, so every label refers to something visible.

Everything is a pure function of ``(seed, split, index)``: a per-item numpy ``Generator`` is
seeded from a ``SeedSequence`` of those three integers, so an item is bit-identical regardless
of access order or DataLoader worker.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "COLOUR_RGB",
    "FILLS",
    "MIN_VISIBLE",
    "SHAPES",
    "SPLITS",
    "ConceptScenes",
    "export_scenes",
    "render_scene",
    "shape_sdf",
]

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "hexagon",
    "diamond",
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

# Per-shape geometry in units of the object's radius R: parameters of the SDF, the analytic
# area (in R^2) and the extent (largest distance of the shape from its centre, in R). The
# factors roughly equalise the apparent size of the different shapes at the same R.
_SQUARE_HALF = 0.85
_TRIANGLE_R = 1.25
_STAR_OUTER, _STAR_INNER, _STAR_POINTS = 1.25, 0.5, 5
_CROSS_ARM, _CROSS_HALF_WIDTH = 1.05, 0.35
_RING_OUTER, _RING_INNER = 1.0, 0.55
_HEXAGON_R = 1.0
_DIAMOND_A, _DIAMOND_B = 1.25, 0.7


def _polygon_area(n: int, r: float) -> float:
    return 0.5 * n * r * r * math.sin(2.0 * math.pi / n)


SHAPE_AREA: tuple[float, ...] = (
    math.pi,
    (2.0 * _SQUARE_HALF) ** 2,
    _polygon_area(3, _TRIANGLE_R),
    _STAR_POINTS * _STAR_OUTER * _STAR_INNER * math.sin(math.pi / _STAR_POINTS),
    8.0 * _CROSS_ARM * _CROSS_HALF_WIDTH - 4.0 * _CROSS_HALF_WIDTH**2,
    math.pi * (_RING_OUTER**2 - _RING_INNER**2),
    _polygon_area(6, _HEXAGON_R),
    2.0 * _DIAMOND_A * _DIAMOND_B,
)
"""Analytic area of each shape at radius R = 1."""

SHAPE_EXTENT: tuple[float, ...] = (
    1.0,
    _SQUARE_HALF * math.sqrt(2.0),
    _TRIANGLE_R,
    _STAR_OUTER,
    math.hypot(_CROSS_ARM, _CROSS_HALF_WIDTH),
    _RING_OUTER,
    _HEXAGON_R,
    _DIAMOND_A,
)
"""Circumradius of each shape at radius R = 1."""


# --------------------------------------------------------------------------------------------
# Signed distance functions (pixel units, negative inside), evaluated on whole grids.
# --------------------------------------------------------------------------------------------


def _sdf_box(u: np.ndarray, v: np.ndarray, hx: float, hy: float) -> np.ndarray:
    qx = np.abs(u) - hx
    qy = np.abs(v) - hy
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def _sdf_regular_polygon(u: np.ndarray, v: np.ndarray, n: int, r: float) -> np.ndarray:
    """Regular n-gon of circumradius ``r`` with an edge midpoint on the +u axis."""
    sector = 2.0 * math.pi / n
    # Fold every point into the sector around the +u axis; there the boundary is one edge.
    ang = np.mod(np.arctan2(v, u) + 0.5 * sector, sector) - 0.5 * sector
    rad = np.hypot(u, v)
    qx = rad * np.cos(ang)
    qy = np.abs(rad * np.sin(ang))
    apothem = r * math.cos(math.pi / n)
    half_edge = r * math.sin(math.pi / n)
    # Beyond the edge's end the nearest boundary point is the vertex (only possible outside).
    return np.where(qy > half_edge, np.hypot(qx - apothem, qy - half_edge), qx - apothem)


def _sdf_folded_segment(
    qx: np.ndarray, qy: np.ndarray, a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    """Signed distance to segment a-b for points folded into the wedge the segment bounds.

    The origin side of the segment's line is inside.
    """
    ex, ey = b[0] - a[0], b[1] - a[1]
    wx = qx - a[0]
    wy = qy - a[1]
    t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    dist = np.hypot(wx - t * ex, wy - t * ey)
    # The origin lies on the positive side of cross(e, w) for every segment used here.
    inside = (ex * wy - ey * wx) > 0.0
    return np.where(inside, -dist, dist)


def _sdf_star(u: np.ndarray, v: np.ndarray, outer: float, inner: float, points: int):
    sector = 2.0 * math.pi / points
    ang = np.abs(np.mod(np.arctan2(v, u) + 0.5 * sector, sector) - 0.5 * sector)
    rad = np.hypot(u, v)
    half = 0.5 * sector
    tip = (outer, 0.0)
    notch = (inner * math.cos(half), inner * math.sin(half))
    return _sdf_folded_segment(rad * np.cos(ang), rad * np.sin(ang), tip, notch)


def _sdf_cross(u: np.ndarray, v: np.ndarray, arm: float, half: float) -> np.ndarray:
    """Plus sign with arms reaching ``arm`` from the centre, ``2 * half`` wide."""
    # Folding across both axes and the diagonal maps every point onto one arm (a >= b >= 0);
    # there the boundary is the arm's side y = half for x >= half and its end cap x = arm.
    au, av = np.abs(u), np.abs(v)
    a, b = np.maximum(au, av), np.minimum(au, av)
    outside = np.hypot(np.maximum(a - arm, 0.0), np.maximum(b - half, 0.0))
    depth = np.minimum(arm - a, np.hypot(np.maximum(half - a, 0.0), half - b))
    return np.where((a < arm) & (b < half), -depth, outside)


def shape_sdf(shape: int, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance of points to a shape centred at the origin in its own frame.

    Args:
        shape: Index into ``SHAPES``.
        u: (...) float array, first local coordinate (pixels, rotation already undone).
        v: (...) float array, second local coordinate, same shape as ``u``.
        radius: Object radius R in pixels (the shape's geometry scales with it).

    Returns:
        (...) float array, negative inside, zero on the boundary, in pixels.
    """
    r = float(radius)
    if shape == 0:
        return np.hypot(u, v) - r
    if shape == 1:
        return _sdf_box(u, v, _SQUARE_HALF * r, _SQUARE_HALF * r)
    if shape == 2:
        return _sdf_regular_polygon(u, v, 3, _TRIANGLE_R * r)
    if shape == 3:
        return _sdf_star(u, v, _STAR_OUTER * r, _STAR_INNER * r, _STAR_POINTS)
    if shape == 4:
        return _sdf_cross(u, v, _CROSS_ARM * r, _CROSS_HALF_WIDTH * r)
    if shape == 5:
        mid = 0.5 * (_RING_OUTER + _RING_INNER) * r
        return np.abs(np.hypot(u, v) - mid) - 0.5 * (_RING_OUTER - _RING_INNER) * r
    if shape == 6:
        return _sdf_regular_polygon(u, v, 6, _HEXAGON_R * r)
    if shape == 7:
        return _sdf_folded_segment(
            np.abs(u), np.abs(v), (_DIAMOND_A * r, 0.0), (0.0, _DIAMOND_B * r)
        )
    raise ValueError(f"shape must be an index in [0, {len(SHAPES)}), got {shape}")


def _soft(sdf: np.ndarray) -> np.ndarray:
    """Coverage of a pixel by the region sdf < 0, with a one-pixel linear edge."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.random(3)
    rgb = colorsys.hsv_to_rgb(float(h), 0.35 * float(s), 0.3 + 0.4 * float(v))
    return np.asarray(rgb, dtype=np.float32)


def _interp_weights(size: int, knots: int) -> tuple[np.ndarray, np.ndarray]:
    """Left knot index (size,) and smooth-step weight (size,) of each pixel centre."""
    pos = (np.arange(size, dtype=np.float32) + 0.5) * np.float32((knots - 1) / size)
    i0 = np.minimum(pos.astype(np.int64), knots - 2)
    f = pos - i0
    return i0, f * f * (3.0 - 2.0 * f)


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) low-frequency value noise in [0, 1]: two octaves of smoothly upsampled knots."""
    field = np.zeros((size, size), dtype=np.float32)
    base = int(rng.integers(3, 6))
    for knots, weight in ((base, 0.7), (2 * base + 1, 0.3)):
        grid = rng.random((knots, knots), dtype=np.float32)
        i0, f = _interp_weights(size, knots)
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
        t = _soft((np.abs(phase - 0.5) - 0.25) * period)
    t = t.astype(np.float32)
    return c0 + t[..., None] * (c1 - c0), kind


# --------------------------------------------------------------------------------------------
# Scene rendering
# --------------------------------------------------------------------------------------------


def _min_visible(own: np.ndarray) -> np.ndarray:
    """Pixels each object must keep unoccluded, given its own pixel areas."""
    return np.maximum(MIN_VISIBLE * own, np.minimum(MIN_VISIBLE_PIXELS, own))


def _item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative integers, got {seed}, {index}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], int(index)]))


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
        return _soft((np.abs(phase - 0.5) - 0.25) * period)
    period = max(4.0, 0.6 * radius)
    cu = u - period * np.round(u / period)
    cv = v - period * np.round(v / period)
    return _soft(np.hypot(cu, cv) - 0.28 * period)


def render_scene(
    seed: int,
    index: int,
    size: int = 64,
    *,
    split: str = "train",
    max_objects: int = 4,
    scale_range: tuple[float, float] = (0.12, 0.28),
    max_tries: int = 24,
) -> dict[str, torch.Tensor]:
    """Render one concept scene; a pure function of ``(seed, split, index)`` and the options.

    Args:
        seed: Non-negative base seed.
        index: Non-negative item index.
        size: Image side in pixels (>= 16).
        split: One of ``SPLITS``; different splits draw from disjoint random streams.
        max_objects: The object count is drawn uniformly from 1..max_objects (an object that
            cannot be placed visibly within ``max_tries`` placements is dropped, so ``count``
            can rarely be lower than drawn, never below 1).
        scale_range: Object radius R as a fraction of ``size``, (low, high).
        max_tries: Placement attempts per object; radii shrink every 4 failed attempts.

    Returns:
        Dict of tensors, K = max_objects:
        ``image`` (3, size, size) float32 in [0, 1] (exactly ``uint8 / 255``);
        ``image_uint8`` (3, size, size) uint8;
        ``label``, ``shape`` () int64: shape class of the object with the largest visible area
        (the first on ties); ``colour`` () int64: that object's colour class;
        ``count`` () int64;
        ``shapes`` (len(SHAPES),) and ``colours`` (len(COLOURS),) float32 multi-hot;
        ``instance_mask`` (size, size) int64, 0 background, 1..count in drawing order;
        ``semantic_mask`` (size, size) int64, 0 background, 1 + shape class;
        ``object_shapes``, ``object_colours``, ``object_fills`` (K,) int64, -1 padded;
        ``object_areas`` (K,) int64 visible pixels, 0 padded;
        ``boxes`` (K, 4) float32 visible-pixel boxes (x0, y0, x1, y1), exclusive ends, 0 padded;
        ``background`` () int64 index into ``BACKGROUNDS``.
    """
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"size must be an int >= {MIN_SIZE}, got {size!r}")
    if not isinstance(max_objects, (int, np.integer)) or max_objects < 1:
        raise ValueError(f"max_objects must be an int >= 1, got {max_objects!r}")
    lo_scale, hi_scale = scale_range
    if not 0.0 < lo_scale <= hi_scale <= 0.4:
        raise ValueError(f"scale_range must satisfy 0 < low <= high <= 0.4, got {scale_range}")
    size, max_objects = int(size), int(max_objects)
    rng = _item_rng(seed, split, index)

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
        for attempt in range(max_tries):
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
            if np.any(new_visible < _min_visible(own)):
                continue
            break
        else:
            if fallback is None:
                logger.debug("scene (%d, %s, %d): dropped an object", seed, split, index)
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
        alpha = _soft(sdf)[..., None]
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
    boxes = np.zeros((k, 4), dtype=np.float32)
    for i, (*_obj, region, _sdf, _uv) in enumerate(placed):
        # An object's visible pixels lie inside its own bounding region.
        m = inst[region] == i + 1
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        x0, y0 = region[1].start, region[0].start
        boxes[i] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
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
        "shape": torch.tensor(main_shape, dtype=torch.int64),
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
        "boxes": torch.from_numpy(boxes),
        "background": torch.tensor(bg_kind, dtype=torch.int64),
    }


class ConceptScenes(Dataset):
    """Map-style dataset of procedurally rendered concept scenes (no files needed).

    Item ``i`` is ``render_scene(seed, i, size, split=split, max_objects=max_objects)`` plus
    the keys the training pipeline expects: ``canvas`` (3, C, C) uint8 with the image at the
    top-left (zeros elsewhere), ``size`` (2,) int64 = (height, width) of the valid region, and
    ``index`` () int64.

    Args:
        size: Image side in pixels (>= 16).
        length: Number of items.
        seed: Non-negative base seed.
        split: ``"train"``, ``"val"`` or ``"test"``; splits use disjoint random streams.
        max_objects: Objects per image are drawn uniformly from 1..max_objects.
        canvas_size: Side C of the ``canvas`` tensor (>= size); defaults to ``size``.
    """

    def __init__(
        self,
        size: int = 64,
        length: int = 10000,
        seed: int = 0,
        split: str = "train",
        max_objects: int = 4,
        canvas_size: int | None = None,
    ) -> None:
        if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
            raise ValueError(f"size must be an int >= {MIN_SIZE}, got {size!r}")
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        if not isinstance(max_objects, (int, np.integer)) or max_objects < 1:
            raise ValueError(f"max_objects must be an int >= 1, got {max_objects!r}")
        canvas_size = size if canvas_size is None else canvas_size
        if canvas_size < size:
            raise ValueError(f"canvas_size must be >= size ({size}), got {canvas_size}")
        self.size = int(size)
        self.length = int(length)
        self.seed = int(seed)
        self.split = split
        self.max_objects = int(max_objects)
        self.canvas_size = int(canvas_size)
        self.classes: tuple[str, ...] = SHAPES

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index out of range for ConceptScenes of length {self.length}")
        item = render_scene(
            self.seed, index, self.size, split=self.split, max_objects=self.max_objects
        )
        image_u8 = item.pop("image_uint8")
        c, s = self.canvas_size, self.size
        if c == s:
            canvas = image_u8
        else:
            canvas = torch.zeros(3, c, c, dtype=torch.uint8)
            canvas[:, :s, :s] = image_u8
        item["canvas"] = canvas
        item["size"] = torch.tensor([s, s], dtype=torch.int64)
        item["index"] = torch.tensor(index, dtype=torch.int64)
        return item


# Where an export puts the images, the semantic and the instance masks (same relative paths).
EXPORT_FOLDERS: tuple[str, str, str] = ("images", "masks", "instances")


def export_scenes(
    out_dir: str | Path,
    split: str = "val",
    n: int = 1000,
    size: int = 64,
    seed: int = 0,
    max_objects: int = 4,
    progress: bool = True,
) -> Path:
    """Write ``n`` scenes of a split as a labelled image folder.

    Layout under ``out_dir``: ``images/<shape_name>/<index>.png`` (RGB; the folder name is the
    main-shape label, so it loads as an image-classification folder; only shapes that occur get
    a folder), ``masks/<shape_name>/<index>.png`` (uint8 ``semantic_mask``: 0 background,
    1 + shape class) and ``instances/<shape_name>/<index>.png`` (uint8 ``instance_mask``),
    ``labels.jsonl`` (one JSON object per image with every label and the relative file paths)
    and ``classes.json`` (class-name tuples). ``images/`` + ``masks/`` is the simple layout
    ``stellar eval seg`` reads (``--num-classes`` 1 + the number of shapes). ``<index>`` is
    zero-padded to at least 6 digits. Item ``i`` equals
    ``ConceptScenes(size, n, seed, split, max_objects)[i]``.

    Args:
        out_dir: Destination folder (created if needed).
        split: Split to render (see ``SPLITS``).
        n: Number of images.
        size: Image side in pixels.
        seed: Base seed.
        max_objects: Maximum objects per image (must be <= 255 for the uint8 masks).
        progress: Show a tqdm progress bar.

    Returns:
        The output folder as a ``Path``.

    Raises:
        ValueError: bad ``n`` / ``max_objects``, or ``out_dir`` already holds an export.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if max_objects > 255:
        raise ValueError(f"max_objects must be <= 255 for uint8 masks, got {max_objects}")
    from tqdm.auto import tqdm

    out = Path(out_dir)
    # Exporting over an earlier export would leave its images beside the new labels.
    folders = [out / d for d in EXPORT_FOLDERS]
    stale = [d for d in folders if d.is_dir() and any(d.iterdir())]
    if stale:
        raise ValueError(
            f"expected a new or empty output folder, but {stale[0]} already holds an export; "
            "choose another folder or delete it"
        )
    ds = ConceptScenes(size=size, length=n, seed=seed, split=split, max_objects=max_objects)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.json").write_text(
        json.dumps({"shapes": SHAPES, "colours": COLOURS, "fills": FILLS}, indent=1) + "\n"
    )
    width = max(6, len(str(max(n - 1, 0))))
    made: set[str] = set()
    with (out / "labels.jsonl").open("w") as fh:
        for i in tqdm(range(n), desc=f"export {split} scenes", disable=not progress):
            item = ds[i]
            name = f"{i:0{width}d}"
            shape_name = SHAPES[int(item["shape"])]
            if shape_name not in made:
                for folder in folders:
                    (folder / shape_name).mkdir(parents=True, exist_ok=True)
                made.add(shape_name)
            img_rel, sem_rel, ins_rel = (f"{d}/{shape_name}/{name}.png" for d in EXPORT_FOLDERS)
            Image.fromarray(item["canvas"].permute(1, 2, 0).numpy()).save(out / img_rel)
            Image.fromarray(item["semantic_mask"].to(torch.uint8).numpy()).save(out / sem_rel)
            Image.fromarray(item["instance_mask"].to(torch.uint8).numpy()).save(out / ins_rel)
            count = int(item["count"])
            record = {
                "index": i,
                "split": split,
                "seed": seed,
                "size": size,
                "image": img_rel,
                "semantic_mask": sem_rel,
                "instance_mask": ins_rel,
                "label": int(item["label"]),
                "shape_name": shape_name,
                "count": count,
                "shapes": [k for k, on in enumerate(item["shapes"].tolist()) if on],
                "colours": [k for k, on in enumerate(item["colours"].tolist()) if on],
                "object_shapes": item["object_shapes"][:count].tolist(),
                "object_colours": item["object_colours"][:count].tolist(),
                "object_fills": item["object_fills"][:count].tolist(),
                "object_areas": item["object_areas"][:count].tolist(),
                "boxes": item["boxes"][:count].tolist(),
                "background": BACKGROUNDS[int(item["background"])],
            }
            fh.write(json.dumps(record) + "\n")
    logger.info("exported %d %s scenes (%d px) to %s", n, split, size, out)
    return out
