"""Small line plots drawn with PIL (no plotting library needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw

from stellar.viz.maps import _font, palette


def line_plot(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str,
    size: tuple[int, int] = (360, 220),
    log_y: bool = False,
) -> Image.Image:
    """One panel with a line per named series of (x, y) points, axes ticks and a legend."""
    w, h = size
    left, right, top, bottom = 48, 10, 22, 26
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = _font(11)
    draw.text((left, 4), title, fill="black", font=font)
    points = [(x, y) for pts in series.values() for x, y in pts if math.isfinite(y)]
    if not points or (log_y and min(y for _, y in points) <= 0):
        log_y = False
    if not points:
        return img
    f = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    xs = [x for x, _ in points]
    ys = [f(y) for _, y in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0) * (w - left - right)
        py = h - bottom - (f(y) - y0) / (y1 - y0) * (h - top - bottom)
        return px, py

    draw.rectangle([left, top, w - right, h - bottom], outline="#888888")
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        label = f"{10**yv:.3g}" if log_y else f"{yv:.3g}"
        py = h - bottom - frac * (h - top - bottom)
        draw.text((2, py - 6), label, fill="#444444", font=font)
        px = left + frac * (w - left - right)
        draw.text(
            (px - 10, h - bottom + 4), f"{x0 + frac * (x1 - x0):.0f}", fill="#444444", font=font
        )
    colours = palette(max(1, len(series)))
    for i, (name, pts) in enumerate(series.items()):
        colour = tuple(int(c) for c in colours[i])
        line = [to_px(x, y) for x, y in pts if math.isfinite(y)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        draw.text((w - right - 110, top + 4 + 12 * i), name, fill=colour, font=font)
    return img
