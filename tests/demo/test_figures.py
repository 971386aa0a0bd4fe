"""The demo's photo figure on small or broken folders, how often it decodes a photo, and the
loss curves."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from stellar import create_stellar
from stellar.data.folder import CentreCropView, EvalImages
from stellar.demo.figures import loss_figure, photo_figure, sample_photos


def _photos(folder, n: int, seed: int = 0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{i}.png")
    return folder


@pytest.fixture(scope="module")
def models():
    return {"STELLAR": create_stellar("stellar-tiny").eval()}


@pytest.mark.parametrize("count", [1, 2, 3])
def test_a_folder_with_fewer_photos_than_rows_shows_them_all(tmp_path, models, count):
    folder = _photos(tmp_path / "photos", count)
    one_row = photo_figure(models, _photos(tmp_path / "one", 1), n=4, size=32)
    figure = photo_figure(models, folder, n=4, size=32)
    assert figure is not None and figure.width == one_row.width
    assert len(sample_photos(EvalImages(folder, 32), 4)) == count
    if count > 1:
        assert figure.height > one_row.height


def test_each_photo_is_decoded_once(tmp_path, models, monkeypatch):
    folder = _photos(tmp_path / "photos", 8)
    loads: list[str] = []
    original = CentreCropView.__call__

    def counting_view(self, path):
        loads.append(str(path))
        return original(self, path)

    monkeypatch.setattr(CentreCropView, "__call__", counting_view)
    assert photo_figure(models, folder, n=4, size=32) is not None
    assert sorted(loads) == [str(p) for p in EvalImages(folder, 32).paths[::2]]


def test_unreadable_photos_are_skipped_and_none_means_no_figure(tmp_path, models):
    folder = _photos(tmp_path / "photos", 3)
    (folder / "broken.png").write_bytes(b"not a png")
    assert [p["path"].endswith(".png") for p in sample_photos(EvalImages(folder, 32), 4)] == [
        True
    ] * 3
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    (only_broken / "a.png").write_bytes(b"not a png")
    assert photo_figure(models, only_broken, n=4, size=32) is None


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
