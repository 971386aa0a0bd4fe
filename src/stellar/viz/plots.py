"""Loss curves drawn by matplotlib (off-screen, Agg) as PIL images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

DPI = 100


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
    # matplotlib is imported here so that `import stellar` stays light; no pyplot state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
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
    fig.tight_layout(pad=0.4)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
