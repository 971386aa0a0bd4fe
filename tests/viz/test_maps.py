"""Concept-map pictures: overlay regions, argmax colours, PCA gradients, palette, layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stellar.viz.maps import (
    argmax_segmentation,
    compose_panel,
    concept_grid,
    concept_overlay,
    concept_views,
    heatmap,
    palette,
    pca_rgb,
    to_pil,
)


def _region_spatial(h: int, w: int, r: int, token: int, rows: slice, cols: slice) -> torch.Tensor:
    """Uniform rows (no token above 1/r) except a block where ``token`` dominates."""
    maps = torch.full((h, w, r), 1.0 / r)
    peak = torch.full((r,), 0.2 / (r - 1))
    peak[token] = 0.8
    maps[rows, cols] = peak
    return maps.reshape(h * w, r)


def test_palette_is_distinct_and_stable() -> None:
    p = palette(24)
    assert p.shape == (24, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p.tolist()}) == 24
    d = np.abs(p[:, None].astype(int) - p[None].astype(int)).sum(-1)
    assert d[~np.eye(24, dtype=bool)].min() >= 60  # no two colours nearly alike
    np.testing.assert_array_equal(palette(6), p[:6])  # colours do not depend on r
    assert palette(200).shape == (200, 3)


def test_overlay_colours_only_the_region() -> None:
    r, p = 6, 8
    spatial = _region_spatial(4, 4, r, token=2, rows=slice(0, 2), cols=slice(2, 4))
    photo = torch.rand(3, 4 * p, 4 * p, generator=torch.Generator().manual_seed(0))
    base = np.asarray(to_pil(photo)).astype(float)
    out = concept_overlay(photo, spatial, (4, 4), alpha=0.5)
    assert isinstance(out, Image.Image) and out.size == (32, 32) and out.mode == "RGB"
    got = np.asarray(out).astype(float)
    region = np.zeros((32, 32), bool)
    region[:16, 16:] = True
    np.testing.assert_array_equal(got[~region], base[~region])  # untouched outside
    color = palette(r)[2].astype(float)
    # Inside: either the outline (the token's colour) or the 50 % blend with it.
    blend = 0.5 * base + 0.5 * color
    is_blend = np.abs(got - blend).max(-1) <= 0.51
    is_edge = np.abs(got - color).max(-1) == 0
    assert (is_blend | is_edge)[region].all()
    assert is_edge[region].any() and is_blend[region].any()
    assert is_edge[1, 16] and is_blend[8, 24]  # border pixel vs interior pixel


def test_overlay_selected_tokens() -> None:
    spatial = _region_spatial(4, 4, 6, token=1, rows=slice(1, 3), cols=slice(1, 3))
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    none = concept_overlay(image, spatial, (4, 4), tokens=[3])
    assert np.array_equal(np.asarray(none), np.asarray(image))  # token 3 is never active
    empty = concept_overlay(image, spatial, (4, 4), tokens=[])  # token 1 is active, not chosen
    assert np.array_equal(np.asarray(empty), np.asarray(image))
    spatial[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        concept_overlay(image, spatial, (4, 4))


def test_argmax_colours_match_tokens() -> None:
    g = torch.Generator().manual_seed(1)
    spatial = torch.randn(3 * 5, 7, generator=g).softmax(-1)
    seg = np.asarray(argmax_segmentation(spatial, (3, 5)))
    assert seg.shape == (3, 5, 3)
    expect = palette(7)[spatial.argmax(-1).reshape(3, 5).numpy()]
    np.testing.assert_array_equal(seg, expect)
    big = np.asarray(argmax_segmentation(spatial, (3, 5), size=(12, 20)))
    np.testing.assert_array_equal(big, np.repeat(np.repeat(expect, 4, 0), 4, 1))


def test_pca_of_a_one_direction_ramp_is_a_gradient() -> None:
    h, w, d = 6, 10, 16
    u = torch.randn(d, generator=torch.Generator().manual_seed(2))
    x = torch.linspace(-1, 1, w).repeat(h)  # varies along the width only
    feats = x[:, None] * u + 3.0
    rgb = np.asarray(pca_rgb(feats, (h, w))).astype(int)
    assert rgb.shape == (h, w, 3)
    red = rgb[..., 0]
    assert (red == red[0]).all()  # constant down each column
    steps = np.diff(red[0])
    assert (steps >= 0).all() or (steps <= 0).all()
    assert abs(red[0, -1] - red[0, 0]) >= 250
    assert (rgb[..., 1:] == 128).all()  # zero-variance components stay flat grey
    feats[0, 0] = float("inf")
    with pytest.raises(ValueError, match="patch features hold NaN or infinite"):
        pca_rgb(feats, (h, w))


def test_pca_red_follows_the_top_component() -> None:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(64, 12, generator=g) * torch.linspace(3, 0.1, 12)
    red = np.asarray(pca_rgb(feats, (8, 8), quantile=0.0))[..., 0].reshape(-1).astype(float)
    centred = (feats - feats.mean(0)).double().numpy()
    top = np.linalg.eigh(centred.T @ centred)[1][:, -1]  # independent: covariance eigvector
    score = centred @ top
    expect = (score - score.min()) / (score.max() - score.min()) * 255
    if np.corrcoef(expect, red)[0, 1] < 0:
        expect = 255 - expect
    assert np.abs(expect - red).max() <= 1.0
    up = pca_rgb(feats, (8, 8), size=32)
    assert up.size == (32, 32)


def test_concept_grid_layout() -> None:
    r, cell = 5, 24
    spatial = _region_spatial(4, 4, r, token=4, rows=slice(0, 1), cols=slice(0, 1))
    panel = concept_grid(torch.zeros(3, 32, 32), spatial, (4, 4), cell=cell, cols=3)
    assert panel.width >= 3 * cell and panel.height >= 2 * cell
    shown = {tuple(c) for c in np.asarray(panel).reshape(-1, 3).tolist()}
    assert {tuple(c) for c in palette(r).tolist()} <= shown  # each token's colour is its legend
    # token 4 lives in the grid's top patch row: all cell / 4 pixel rows of it show its peak
    alone = np.asarray(concept_grid(torch.zeros(3, 32, 32), spatial[:, 4:], (4, 4), cell=cell))
    peak = np.round(0.7 * heatmap(np.array([1.0]))[0].astype(np.float32)).astype(np.uint8)
    assert (alone == peak).all(axis=2).any(axis=1).sum() == cell // 4  # none under the band
    low, high = heatmap(np.array([0.0, 1.0])).astype(int)
    assert low.sum() < 10 and high.min() > 150  # dark at 0, pale at the peak


def test_concept_views_are_the_panels_of_viz_and_the_explorer() -> None:
    r, grid = 5, (4, 4)
    spatial = _region_spatial(4, 4, r, token=1, rows=slice(0, 2), cols=slice(0, 2))
    dense = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    views = concept_views(image, spatial, dense, spatial @ dense[:r], grid, 40, cols=3)
    for key in ("photo", "concepts", "argmax", "pca_dense", "pca_lowrank"):
        assert views[key].size == (40, 40), key
    # each panel is the picture of its own function, at the same size
    assert views["argmax"] == argmax_segmentation(spatial, grid, size=40)
    assert views["pca_dense"] == pca_rgb(dense, grid, size=40)
    assert views["concepts"] == concept_overlay(views["photo"], spatial, grid)
    assert views["tokens"] == concept_grid(views["photo"], spatial, grid, cols=3)


def test_compose_panel_places_cells() -> None:
    red = Image.new("RGB", (20, 10), (255, 0, 0))
    blue = Image.new("RGB", (5, 15), (0, 0, 255))
    fig = compose_panel([[red, (blue, "b")], [Image.new("RGB", (4, 4), (0, 255, 0))]], pad=2)
    a = np.asarray(fig)
    assert fig.width == 2 + 20 + 2 + 5 + 2
    ys, xs = np.nonzero((a == (255, 0, 0)).all(-1))
    assert len(ys) == 200 and xs.min() == 2 and xs.max() == 21
    ys_b, xs_b = np.nonzero((a == (0, 0, 255)).all(-1))
    assert len(ys_b) == 75 and xs_b.min() == 24 and ys_b.min() == ys.min()  # top-aligned
    green = np.nonzero((a == (0, 255, 0)).all(-1))[0]
    assert len(green) == 16 and green.min() > ys_b.max()  # second row below the first
    titled = compose_panel([[red]], title="a long title that is wider than the image")
    assert titled.width > 24
