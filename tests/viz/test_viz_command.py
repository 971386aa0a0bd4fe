"""``stellar viz``: figures at 2x the native resolution, metrics, the encoder-only fallback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stellar import create_stellar
from stellar.cli import main
from stellar.viz.command import concept_metrics, render_figure


def _photos(root: Path, n: int = 2) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = np.zeros((90, 120, 3), np.uint8)
        a[:, :60] = (200, 40, 40)
        a[20:70, 70:110] = (30, 200, 60)
        a = np.clip(a + rng.integers(0, 40, a.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(root / f"im{i}.png")
    return root


def test_concept_metrics() -> None:
    spatial = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.8, 0.1, 0.1]]])
    m = concept_metrics(spatial)  # threshold 1/3
    torch.testing.assert_close(m["peak_dist"], torch.tensor([[0.8, 0.4, 0.7]]))
    torch.testing.assert_close(m["coverage"], torch.tensor([[0.75, 0.25, 0.25]]))
    torch.testing.assert_close(m["argmax_share"], torch.tensor([[0.75, 0.0, 0.25]]))
    torch.testing.assert_close(m["overlap"], torch.tensor([5 / 4]))
    assert m["active"].tolist() == [[True, True, True]]
    assert concept_metrics(spatial, threshold=0.75)["active"].tolist() == [[True, False, False]]


def test_viz_at_twice_native_resolution(tmp_path: Path) -> None:
    images = _photos(tmp_path / "imgs")
    out = tmp_path / "out"
    argv = ["viz", "--model", "stellar-tiny", "--images", str(images), "--out", str(out)]
    assert main([*argv, "--resolution", "128", "--max-images", "1"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["0000_im0.png"]
    fig = Image.open(pngs[0])
    assert fig.width >= 6 * 128  # six panels: the pixel-head decoder reconstructs
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["grid"] == [16, 16] and metrics["reconstruction"] is None
    (entry,) = metrics["images"]
    assert len(entry["peak_dist"]) == 6 and len(entry["coverage"]) == 6
    assert abs(sum(entry["argmax_share"]) - 1) < 1e-3
    assert entry["num_active"] == len(entry["active_tokens"])


def test_viz_without_decoder_omits_reconstruction(tmp_path: Path, capsys) -> None:
    ckpt = create_stellar("stellar-tiny").save_pretrained(tmp_path / "ckpt")
    images = _photos(tmp_path / "imgs", 2)
    out = tmp_path / "out"
    argv = ["viz", "--model", str(ckpt), "--images", str(images / "im1.png"), str(images)]
    assert main([*argv, "--out", str(out), "--cell-size", "64"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "omitted" in metrics["reconstruction"] and "decoder" in metrics["reconstruction"]
    assert [Path(m["path"]).name for m in metrics["images"]] == ["im1.png", "im0.png", "im1.png"]
    assert len(list(out.glob("*.png"))) == 3
    assert Image.open(out / "0000_im1.png").width < 6 * 64  # five panels
    assert "im0.png" in capsys.readouterr().out  # the summary table
    with pytest.raises(ValueError, match="patch size"):
        main([*argv, "--out", str(out), "--resolution", "60"])


def test_render_figure_panels() -> None:
    model = create_stellar("stellar-tiny").eval()
    image = torch.rand(3, 64, 64)
    with torch.no_grad():
        out = {k: v[0] for k, v in model.encode(image[None]).items()}
    with_rec = render_figure(image, out, (8, 8), reconstruction=image, cell=64)
    without = render_figure(image, out, (8, 8), cell=64)
    assert with_rec.width - without.width >= 64


@pytest.mark.shared
def test_viz_samples(samples_dir: Path, tmp_path: Path) -> None:
    photos = sorted((samples_dir / "images224").glob("*"))[:6]
    out = tmp_path / "out"
    argv = ["viz", "--model", "stellar-tiny", "--images", *map(str, photos), "--out", str(out)]
    assert main([*argv, "--cell-size", "96"]) == 0
    assert len(list(out.glob("*.png"))) == 6
    assert len(json.loads((out / "metrics.json").read_text())["images"]) == 6
