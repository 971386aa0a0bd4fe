"""Charts drawn by matplotlib (off-screen, Agg) as PIL images: loss curves and bar charts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

DPI = 100


def _figure(size: tuple[int, int]) -> tuple[Any, Any]:
    # matplotlib is imported here so that `import stellar` stays light; no pyplot state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    return fig, FigureCanvasAgg(fig)


def _image(fig: Any, canvas: Any) -> Image.Image:
    fig.tight_layout(pad=0.4)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def line_plot(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str,
    size: tuple[int, int] = (360, 220),
    log_y: bool = False,
) -> Image.Image:
    """One panel with a line per named series of (x, y) points, axes ticks and a legend.

    Non-finite points are left out; ``log_y`` falls back to a linear axis when a value is not
    positive. Returns an RGB image of ``size`` pixels (width, height).
    """
    fig, canvas = _figure(size)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    finite = {name: [(x, y) for x, y in pts if math.isfinite(y)] for name, pts in series.items()}
    for name, pts in finite.items():
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, label=name, linewidth=1.5)
    values = [y for pts in finite.values() for _, y in pts]
    if log_y and values and min(values) > 0:
        ax.set_yscale("log")
    if any(finite.values()):
        ax.legend(fontsize=7, frameon=False)
    return _image(fig, canvas)


def bar_chart(
    groups: Sequence[str],
    bars: dict[str, Sequence[float | None]],
    title: str,
    size: tuple[int, int] = (640, 300),
    stacked: bool = False,
) -> Image.Image:
    """Bars per group: one bar per named series side by side, or one stacked bar per group.

    Args:
        groups: the x-axis labels.
        bars: ``{series: value per group}``; None draws nothing.
        title: above the axes.
        size: (width, height) in pixels.
        stacked: stack the series (e.g. shares summing to 1) instead of placing them apart.
    """
    fig, canvas = _figure(size)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    x = np.arange(len(groups))
    width = 0.8 if stacked else 0.8 / max(len(bars), 1)
    bottom = np.zeros(len(groups))
    for i, (name, values) in enumerate(bars.items()):
        v = np.array([np.nan if a is None else a for a in values], dtype=float)
        offset = 0.0 if stacked else (i - (len(bars) - 1) / 2) * width
        ax.bar(x + offset, v, width, bottom=bottom if stacked else None, label=name)
        bottom = bottom + np.nan_to_num(v)
    ax.set_xticks(x, list(groups), fontsize=7)
    ax.legend(fontsize=7, frameon=False)
    return _image(fig, canvas)
