"""The demo's loss curves."""

from __future__ import annotations

import json
import sys

import numpy as np

from stellar.demo.figures import loss_figure


def test_loss_curves_are_drawn_by_matplotlib_without_non_finite_points(tmp_path):
    runs = {}
    for name, scale in (("a", 1.0), ("b", 2.0)):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        rows = [
            {"step": s, "lr": 0.1, "loss": scale / s, "koleo_loss": -scale, "MSE": float("nan")}
            for s in range(1, 20)
        ]
        (runs[name] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figure = loss_figure(runs)  # a term with no finite point, a negative one: no failure
    assert "matplotlib" in sys.modules and figure.mode == "RGB"
    pixels = np.asarray(figure).astype(int)
    assert ((pixels.max(-1) - pixels.min(-1)) > 60).sum() > 100  # coloured curves are drawn
    assert figure.width > 2 * figure.height  # two panels side by side: loss, koleo_loss
