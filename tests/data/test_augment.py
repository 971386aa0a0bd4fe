"""Batched crops and colour augmentation against torch / PIL / scipy / colorsys references."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

from stellar.data.augment import (
    ColorAugment,
    MultiViewAugment,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    random_resized_crop,
    rgb_to_grayscale,
)
from stellar.losses.objective import ViewPlan

NO_COLOR = {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0}


def color_blur(x: torch.Tensor, generator: torch.Generator, **settings) -> torch.Tensor:
    return ColorAugment(**settings)(x, generator)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sentinel_canvas(sizes: list[tuple[int, int]], side: int, content: torch.Tensor | None = None):
    """Canvas whose padding is magenta; valid region = ``content`` or mid-gray."""
    b = len(sizes)
    canvas = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1).repeat(b, 1, side, side)
    for k, (h, w) in enumerate(sizes):
        canvas[k, :, :h, :w] = 0.5 if content is None else content[k, :, :h, :w]
    return canvas, torch.tensor(sizes, dtype=torch.int64)


def _ramp_canvas(sizes: list[tuple[int, int]], side: int):
    """:func:`_sentinel_canvas` whose valid region holds each pixel's column / side in channel
    0, its row / side in channel 1 and mid-gray in channel 2 (where magenta would show)."""
    coord = torch.arange(side, dtype=torch.float32) / side
    ramps = torch.stack([coord.expand(side, side), coord[:, None].expand(side, side)])
    content = torch.cat([ramps, torch.full((1, side, side), 0.5)])
    return _sentinel_canvas(sizes, side, content.expand(len(sizes), 3, side, side))


def _read_boxes(views: torch.Tensor, side: int) -> dict[str, torch.Tensor]:
    """Each view's crop box (canvas pixels, rounded) and flip, read back from the ramps of a
    :func:`_ramp_canvas`. Output pixel i of n shows the canvas at ``start + (i + 0.5) / n *
    extent`` (a flip mirrors the fraction), where the ramp reads that position - 0.5 pixel; a
    least-squares line through the middle half of the columns (rows), away from the crop's
    edges, recovers start and extent to within 0.35 px (bicubic's a = -0.75 kernel bends a ramp
    by up to 0.05 px). Not for crops of a single pixel, whose views are flat."""
    n = views.shape[-1]
    mid = slice(n // 4, n - n // 4)
    f = (torch.arange(n, dtype=torch.float64)[mid] + 0.5) / n

    def line(ramp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ramp = ramp[..., mid].double() * side
        slope = ((f - f.mean()) * (ramp - ramp.mean(-1, keepdim=True))).sum(-1)
        slope = slope / (f - f.mean()).square().sum()
        return ramp.mean(-1) - slope * f.mean() + 0.5, slope  # value at fraction 0, extent

    left, dx = line(views[:, :, 0].mean(-2))  # (B, V), the column ramp averaged over rows
    top, height = line(views[:, :, 1].mean(-1))
    left = left + dx.clamp(max=0)  # flipped: fraction 0 is the right edge
    box = {"top": top, "left": left, "height": height, "width": dx.abs()}
    return {**{k: v.round().long() for k, v in box.items()}, "flip": dx < 0}


def test_multiview_shapes_range_and_reproducibility() -> None:
    aug = MultiViewAugment(global_size=24, local_size=12, n_local=2)
    plan = ViewPlan(masked=3, local=2, second=True)
    canvas = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    size = torch.tensor([[32, 20], [17, 32]])
    out = aug.make(canvas, size, plan, _gen(1))
    assert out["image"].shape == out["second_view"].shape == (2, 3, 24, 24)
    assert out["masked_views"].shape == (6, 3, 24, 24)
    assert out["local_views"].shape == (4, 3, 12, 12)
    for v in out.values():
        assert v.dtype == torch.float32 and v.min() >= 0 and v.max() <= 1
    again = aug.make(canvas, size, plan, _gen(1))
    other = aug.make(canvas, size, plan, _gen(2))
    for k in out:
        assert torch.equal(out[k], again[k])
        assert not torch.equal(out[k], other[k])
    # float input in [0, 1] gives the same views as the uint8 canvas
    same = aug.make(canvas.float() / 255, size, plan, _gen(1))
    torch.testing.assert_close(same["image"], out["image"])


def test_full_crop_is_bicubic_resize_and_flip_mirrors() -> None:
    content = torch.rand(2, 3, 40, 40)
    canvas, size = _sentinel_canvas([(20, 20), (33, 33)], 40, content)
    kw = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "generator": _gen()}
    plain = random_resized_crop(canvas, size, 28, 2, flip_p=0.0, **kw)
    flipped = random_resized_crop(canvas, size, 28, 2, flip_p=1.0, **kw)
    for k, (h, w) in enumerate(size.tolist()):
        ref = F.interpolate(
            content[k : k + 1, :, :h, :w], size=(28, 28), mode="bicubic", align_corners=False
        ).clamp(0, 1)[0]
        for v in range(2):
            torch.testing.assert_close(plain[k, v], ref, atol=1e-5, rtol=0)
            torch.testing.assert_close(flipped[k, v], ref.flip(-1), atol=1e-5, rtol=0)


def test_fallback_is_centre_crop() -> None:
    content = torch.rand(1, 3, 32, 32)
    canvas, size = _sentinel_canvas([(16, 30)], 32, content)
    views = random_resized_crop(canvas, size, 32, 1, (1.0, 1.0), (1.0, 1.0), _gen(), flip_p=0.0)
    # sqrt(16 * 30) > 16 never fits: torchvision falls back to the centred 16 x 16 square
    # (rows 0-15, columns 7-22), which the view is a resize of (random content: no other box is)
    ref = F.interpolate(content[:, :, :16, 7:23], size=32, mode="bicubic", align_corners=False)
    ref = ref.clamp(0, 1)
    # away from the crop border (where we read the real neighbours, not a replicated edge)
    torch.testing.assert_close(views[0, 0, :, 4:-4, 4:-4], ref[0, :, 4:-4, 4:-4], atol=1e-5, rtol=0)


def test_crops_stay_inside_valid_region() -> None:
    sizes = [(64, 64), (64, 9), (7, 64), (30, 41), (12, 50), (1, 1)]
    canvas, size = _ramp_canvas(sizes, 64)
    for scale, out in (((0.06, 0.36), 8), ((0.36, 1.0), 11), ((0.01, 1.0), 5)):
        views = random_resized_crop(canvas, size, out, 40, scale=scale, generator=_gen(3))
        # any magenta padding leaking in would move a pixel away from the uniform 0.5 gray
        gray = views[:, :, 2]
        torch.testing.assert_close(gray, torch.full_like(gray, 0.5), atol=1e-5, rtol=0)
        # the 1 x 1 image has one crop: its pixel (0, 0)
        torch.testing.assert_close(views[-1, :, :2], torch.zeros_like(views[-1, :, :2]))
        # the padding repeats the valid edge, so a box reaching past it shows in the ramps only
        p = _read_boxes(views[:-1], 64)
        h, w = size[:-1, None, 0], size[:-1, None, 1]
        assert (p["top"] >= 0).all() and (p["left"] >= 0).all()
        assert (p["height"] >= 1).all() and (p["width"] >= 1).all()
        assert (p["top"] + p["height"] <= h).all() and (p["left"] + p["width"] <= w).all()


def test_crop_parameter_distribution() -> None:
    canvas, size = _ramp_canvas([(200, 200)] * 4, 200)
    p = _read_boxes(
        random_resized_crop(canvas, size, 16, 250, scale=(0.36, 1.0), generator=_gen(4)), 200
    )
    area = (p["height"] * p["width"]).double() / 200**2
    aspect = p["width"].double() / p["height"].double()
    assert area.min() > 0.35 and area.max() <= 1.0
    assert aspect.min() > 0.74 and aspect.max() < 1.35
    assert 0.6 < area.mean() < 0.75  # uniform on [0.36, 1] has mean 0.68
    assert 0.45 < p["flip"].double().mean() < 0.55
    assert len(torch.unique(p["top"])) > 20 and len(torch.unique(p["left"])) > 20


@pytest.mark.parametrize(
    "scale,ratio", [((0.5, 0.2), (0.75, 1.33)), ((0.5, 3.0), (0.75, 1.33)), ((0.5, 1.0), (2, 1))]
)
def test_crop_rejects_bad_scale_and_ratio(scale, ratio) -> None:
    canvas, size = torch.rand(2, 3, 16, 16), torch.tensor([[16, 16], [4, 4]])
    with pytest.raises(ValueError, match="scale|ratio"):
        random_resized_crop(canvas, size, 8, 1, scale=scale, ratio=ratio)


def test_color_p0_identity_and_partial_selection() -> None:
    x = torch.rand(64, 3, 12, 12)
    assert torch.equal(color_blur(x, _gen(), **NO_COLOR), x)
    out = color_blur(x, _gen(), jitter_p=0.5, gray_p=0.0, blur_p=0.0)
    unchanged = (out == x).flatten(1).all(1)
    assert 16 < int(unchanged.sum()) < 48  # the others really changed
    assert not (out[~unchanged] == x[~unchanged]).flatten(1).all(1).any()
    for name in ("gray_p", "blur_p"):
        kw = {**NO_COLOR, name: 0.5}
        out = color_blur(x, _gen(), **kw)
        assert 16 < int((out == x).flatten(1).all(1).sum()) < 48
    again = color_blur(x, _gen(), jitter_p=0.5)
    assert torch.equal(again, color_blur(x, _gen(), jitter_p=0.5))


def test_grayscale_equal_channels_itu601() -> None:
    x = torch.rand(5, 3, 8, 8)
    out = color_blur(x, _gen(), **{**NO_COLOR, "gray_p": 1.0})
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    ref = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(out[:, 0], ref)
    pil = np.asarray(
        Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    )
    pil_gray = np.asarray(Image.fromarray(pil).convert("L")).astype(float)
    assert np.abs(pil_gray - out[0, 0].numpy() * 255).max() < 1.01


def test_brightness_is_a_per_sample_scale() -> None:
    x = 0.1 + 0.5 * torch.rand(32, 3, 6, 6)  # 1.4 * 0.6 < 1: no clamping
    out = color_blur(
        x, _gen(), brightness=0.4, contrast=0, saturation=0, hue=0, jitter_p=1.0, gray_p=0, blur_p=0
    )
    f = (out / x).flatten(1)
    torch.testing.assert_close(f, f[:, :1].expand_as(f))
    assert f.min() >= 0.6 - 1e-6 and f.max() <= 1.4 + 1e-6 and f.std() > 0.1


def _pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).astype(np.float32) / 255).permute(2, 0, 1)


def test_contrast_and_saturation_match_pil() -> None:
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16)) / 255).float()
    factors = torch.tensor([0.6, 1.4])
    con = adjust_contrast(x, factors)
    sat = adjust_saturation(x, factors)
    for k, f in enumerate(factors.tolist()):
        ref_c = _tensor(ImageEnhance.Contrast(_pil(x[k])).enhance(f))
        ref_s = _tensor(ImageEnhance.Color(_pil(x[k])).enhance(f))
        # PIL rounds its gray mean / gray image to integers: allow ~2 levels
        assert (con[k] - ref_c).abs().max() < 2.5 / 255
        assert (sat[k] - ref_s).abs().max() < 2.5 / 255


def test_hue_matches_colorsys_and_zero_is_identity() -> None:
    x = torch.rand(3, 3, 5, 7)
    x[0, :, 0, 0] = torch.tensor([0.3, 0.3, 0.3])  # gray pixel: hue undefined, must stay
    x[0, :, 0, 1] = torch.tensor([1.0, 1.0, 0.2])  # r == g tie
    torch.testing.assert_close(adjust_hue(x, 0.0), x, atol=1e-6, rtol=0)
    factors = torch.tensor([0.25, -0.1, 0.5])
    out = adjust_hue(x, factors)
    for k, f in enumerate(factors.tolist()):
        pix = x[k].permute(1, 2, 0).reshape(-1, 3).tolist()
        ref = []
        for r, g, b in pix:
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            ref.append(colorsys.hsv_to_rgb((h + f) % 1.0, s, v))
        ref_t = torch.tensor(ref).view(5, 7, 3).permute(2, 0, 1)
        torch.testing.assert_close(out[k], ref_t, atol=1e-5, rtol=0)


def test_blur_matches_scipy_and_keeps_constant_mean() -> None:
    from scipy.ndimage import gaussian_filter1d

    x = torch.rand(2, 3, 16, 20, dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.7], dtype=torch.float64)
    out = gaussian_blur(x, sigma, 9)
    for k, s in enumerate(sigma.tolist()):
        # scipy's 'mirror' is torch's 'reflect'; truncate chosen so the radius is 4
        ref = x[k].numpy()
        for axis in (1, 2):
            ref = gaussian_filter1d(ref, s, axis=axis, mode="mirror", truncate=4.0 / s)
        np.testing.assert_allclose(out[k].numpy(), ref, atol=1e-10)
    const = torch.full((4, 3, 10, 10), 0.37)
    blurred = color_blur(const, _gen(), **{**NO_COLOR, "blur_p": 1.0})
    torch.testing.assert_close(blurred, const, atol=1e-6, rtol=0)


def test_multiview_color_contract() -> None:
    gray = ColorAugment(jitter_p=0.0, gray_p=1.0, blur_p=0.0)
    aug = MultiViewAugment(16, 8, n_local=3, color=gray)
    canvas = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    size = torch.tensor([[20, 20], [20, 15]])
    out = aug.make(canvas, size, ViewPlan(masked=2, local=3, second=True), _gen())
    for key in ("local_views", "masked_views", "second_view"):  # colour-augmented (gray here)
        assert torch.equal(out[key][:, 0], out[key][:, 1])
    assert not torch.equal(out["image"][:, 0], out["image"][:, 1])  # the main view is not
    glob = out["image"].unsqueeze(1)
    colored = aug.color(glob, _gen())
    luma = rgb_to_grayscale(glob.flatten(0, 1)).view(2, 1, 1, 16, 16).expand_as(glob)
    assert colored.shape == glob.shape and torch.equal(colored, luma)
    aug.color.gray_p = 0.0  # a setting edited in place takes effect at the next call
    assert torch.equal(aug.color(glob, _gen()), glob)


def test_multiview_rejects_unusable_settings_when_built() -> None:
    with pytest.raises(ValueError, match="global_scale: .* <= 1"):
        MultiViewAugment(16, 8, global_scale=(0.5, 3.0))
    with pytest.raises(ValueError, match=r"expected at most 7 to blur the 4 px views .*got 9"):
        MultiViewAugment(16, 4)  # the local views are too small to blur
    MultiViewAugment(16, 4, n_local=0)  # no local views: nothing too small
    MultiViewAugment(16, 4, color=ColorAugment(blur_p=0.0))  # no blur
    with pytest.raises(ValueError, match="blur_kernel: expected an odd size, got 8"):
        ColorAugment(blur_kernel=8)


@pytest.mark.parametrize(
    "plan",
    [ViewPlan(masked=3, local=2), ViewPlan(masked=0, local=2), ViewPlan(masked=1, second=True)],
)
def test_make_builds_exactly_the_planned_views(plan) -> None:
    aug = MultiViewAugment(32, 16, n_local=3, color=ColorAugment(**NO_COLOR))
    canvas, size = _sentinel_canvas([(40, 36), (48, 48)], 48, torch.rand(2, 3, 48, 48))
    out = aug.make(canvas, size, plan, _gen(1))
    expected = {"image"}
    expected |= {"masked_views"} if plan.masked else set()
    expected |= {"local_views"} if plan.local else set()
    expected |= {"second_view"} if plan.second else set()
    assert set(out) == expected
    assert out["image"].shape == (2, 3, 32, 32)
    if plan.masked:
        assert out["masked_views"].shape == (2 * plan.masked, 3, 32, 32)
        # Image-major, the first masked view of each image is its main view (no colour here).
        torch.testing.assert_close(out["masked_views"][:: plan.masked], out["image"])
    if plan.local:
        assert out["local_views"].shape == (2 * plan.local, 3, 16, 16)
    if plan.second:
        assert out["second_view"].shape == (2, 3, 32, 32)
        assert not torch.equal(out["second_view"], out["image"])
    again = aug.make(canvas, size, plan, _gen(1))
    assert all(torch.equal(out[k], again[k]) for k in out)
