"""Shape geometry of the concept scenes: signed distance functions (pixels, negative inside)
on pixel grids, in the object's own frame, scaled by its radius R."""

from __future__ import annotations

import math

import numpy as np

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
    """Signed distance in pixels (negative inside) of the points ``(u, v)`` (two (...) arrays of
    local coordinates, pixels, rotation undone) to shape ``shape`` of radius R = ``radius`` px
    centred at the origin."""
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


def soft_coverage(sdf: np.ndarray) -> np.ndarray:
    """Coverage of a pixel by the region sdf < 0, with a one-pixel linear edge."""
    return np.clip(0.5 - sdf, 0.0, 1.0)
