"""Line plots: drawn by matplotlib, the size asked for, every series visible."""

from __future__ import annotations

import math
import sys

import numpy as np

from stellar.viz.plots import line_plot


def _coloured_pixels(img) -> int:
    a = np.asarray(img).astype(int)
    return int(((a.max(-1) - a.min(-1)) > 60).sum())  # saturated: a line, not text or axes


def test_line_plot_draws_each_series_at_the_asked_size():
    one = {"loss": [(i, 10.0 / (i + 1)) for i in range(50)]}
    two = {**one, "recon": [(i, 5.0 / (i + 1)) for i in range(50)]}
    img1, img2 = line_plot(one, "loss", log_y=True), line_plot(two, "loss", log_y=True)
    assert img1.size == (360, 220) and img1.mode == "RGB"
    assert "matplotlib" in sys.modules  # drawn by the plotting library, not by hand
    assert _coloured_pixels(img2) > _coloured_pixels(img1) > 50


def test_line_plot_skips_non_finite_points_and_empty_series():
    img = line_plot({"a": [(0, math.nan), (1, math.inf)], "b": []}, "nothing", size=(200, 100))
    assert img.size == (200, 100)
    assert _coloured_pixels(img) == 0
    # a non-positive value makes log_y fall back to a linear axis instead of failing
    assert line_plot({"a": [(0, -1.0), (1, 2.0)]}, "lin", log_y=True).size == (360, 220)
