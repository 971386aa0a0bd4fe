"""Pictures of concept maps and features, drawn with PIL and torch (matplotlib's colour map).

Every function is pure: tensors in, a PIL RGB image out. Shapes: ``spatial`` is one image's
localisation matrix L, (n, r) with n = h·w patches in row-major order and rows on the simplex;
``grid`` is the patch grid (h, w). Token ``k`` is always drawn in ``palette(r)[k]``, so the
same concept has the same colour in every panel of a figure.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = [
    "argmax_segmentation",
    "compose_panel",
    "concept_grid",
    "concept_overlay",
    "concept_views",
    "heatmap",
    "palette",
    "pca_rgb",
    "to_pil",
]

ImageLike = Image.Image | Tensor
Cell = ImageLike | tuple


# ---------------------------------------------------------------------------- colours
def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in [0, 255] -> CIELAB (D65)."""
    c = rgb / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )


@functools.lru_cache(maxsize=8)
def _palette_table(size: int) -> np.ndarray:
    # Greedy farthest-point sampling in CIELAB over a grid of saturated, not-too-dark colours:
    # each new colour is the candidate farthest from all colours chosen so far.
    levels = np.linspace(0, 255, 8)
    cand = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    lab = _srgb_to_lab(cand)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    keep = (chroma > 35) & (lab[:, 0] > 35)
    cand, lab = cand[keep], lab[keep]
    first = int(np.argmin(np.abs(cand - np.array([255.0, 0.0, 0.0])).sum(1)))
    chosen = [first]
    dist = np.linalg.norm(lab - lab[first], axis=1)
    for _ in range(min(size, len(cand)) - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(lab - lab[nxt], axis=1))
    return np.round(cand[chosen]).astype(np.uint8)


def palette(n: int) -> np.ndarray:
    """``n`` distinguishable colours, (n, 3) uint8; the first ones do not depend on ``n``.

    Up to 64 colours are chosen greedily for maximal CIELAB distance; more tokens reuse them
    cyclically.
    """
    table = _palette_table(64)
    return table[np.arange(n) % len(table)]


def heatmap(values: Tensor | np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 colours (..., 3) of matplotlib's inferno map."""
    from matplotlib import colormaps  # imported on use: `import stellar` stays light

    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return colormaps["inferno"](v, bytes=True)[..., :3]


# ---------------------------------------------------------------------------- conversions
def to_pil(image: ImageLike) -> Image.Image:
    """A PIL RGB image from a PIL image or a (3, H, W) tensor (float in [0, 1] or uint8)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    t = image.detach().cpu()
    if t.is_floating_point():
        t = (t.float().clamp(0, 1) * 255).round()
    return Image.fromarray(t.to(torch.uint8).permute(1, 2, 0).numpy(), "RGB")


def _maps(spatial: Tensor, grid: tuple[int, int]) -> Tensor:
    """(n, r) spatial -> (r, h, w) float32 maps."""
    h, w = int(grid[0]), int(grid[1])
    return _finite(spatial, "spatial maps").T.reshape(-1, h, w)


def _finite(values: Tensor, what: str) -> Tensor:
    """``values`` as float32 on the CPU; a ValueError if any is NaN or infinite."""
    out = values.detach().float().cpu()
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"the {what} hold NaN or infinite values (a diverged checkpoint?)")
    return out


def _resized(image: Image.Image, size: int | tuple[int, int] | None, resample) -> Image.Image:
    """``image`` at ``size``: an (H, W) pair, a side, or None to keep it (one pixel a patch)."""
    if size is None:
        return image
    h, w = (size, size) if isinstance(size, int) else size
    return image.resize((w, h), resample)


# ---------------------------------------------------------------------------- concept maps
def concept_overlay(
    image: ImageLike,
    spatial: Tensor,
    grid: tuple[int, int],
    tokens: Sequence[int] | None = None,
    alpha: float = 0.45,
) -> Image.Image:
    """Each token's region (map > 1/r) over the photo (3, H, W) or PIL,
    any size, as a fill of opacity ``alpha`` with an opaque outline; ``spatial`` (n, r) on the
    patch ``grid`` (h, w); only the ``tokens`` given (default: all).

    Pixels where several tokens pass 1/r get the mean of their colours; pixels where
    none does are the photo unchanged.
    """
    photo = torch.from_numpy(np.asarray(to_pil(image), dtype=np.float32).copy())
    size = photo.shape[:2]
    maps = _maps(spatial, grid)
    r = maps.shape[0]
    colors = torch.from_numpy(palette(r).astype(np.float32))
    ids = torch.arange(r) if tokens is None else torch.as_tensor(list(tokens), dtype=torch.long)
    if not ids.numel():  # no tokens chosen: the photo as it is
        return to_pil(image)
    width = max(1, round(min(size) / 256))
    up = F.interpolate(maps[ids][None], size=size, mode="nearest")[0]
    mask = (up > 1.0 / r).float()
    # Erode by max-pooling the complement; the padding counts as inside the region, so the
    # image border is not outlined.
    eroded = 1 - F.max_pool2d(1 - mask[None], 2 * width + 1, 1, width)[0]
    border = mask * (1 - eroded)
    fill = torch.einsum("khw,kc->hwc", mask, colors[ids])
    edge = torch.einsum("khw,kc->hwc", border, colors[ids])
    fill_n, edge_n = mask.sum(0), border.sum(0)
    out = photo.clone()
    covered = fill_n > 0
    mean_fill = fill[covered] / fill_n[covered, None]
    out[covered] = (1 - alpha) * photo[covered] + alpha * mean_fill
    on_edge = edge_n > 0
    out[on_edge] = edge[on_edge] / edge_n[on_edge, None]
    return Image.fromarray(out.round().clamp(0, 255).to(torch.uint8).numpy(), "RGB")


def argmax_segmentation(
    spatial: Tensor,
    grid: tuple[int, int],
    size: int | tuple[int, int] | None = None,
    image: ImageLike | None = None,
    alpha: float = 1.0,
) -> Image.Image:
    """Each patch of ``spatial`` (n, r) on ``grid`` (h, w) coloured by its most likely token,
    ``palette(r)[argmax_k L[i, k]]``, at ``size`` (H, W) or side (default: one pixel a patch;
    patches are upsampled as blocks), over ``image`` with opacity ``alpha`` if one is given."""
    maps = _maps(spatial, grid)
    labels = maps.argmax(0)  # (h, w)
    seg = torch.from_numpy(palette(maps.shape[0]))[labels]  # (h, w, 3) uint8
    out = _resized(Image.fromarray(seg.numpy(), "RGB"), size, Image.Resampling.NEAREST)
    if image is not None and alpha < 1:
        photo = to_pil(image).resize(out.size, Image.Resampling.BICUBIC)
        out = Image.blend(photo, out, alpha)
    return out


def pca_rgb(
    features: Tensor,
    grid: tuple[int, int],
    size: int | tuple[int, int] | None = None,
    quantile: float = 0.01,
) -> Image.Image:
    """The top-3 principal components of one image's patch features as RGB.

    Features are centred, the components come from an exact SVD, each component's sign is
    fixed so that its largest-magnitude loading is positive (deterministic output), and each
    channel is mapped to [0, 1] between its ``quantile`` and ``1 - quantile`` values (robust
    min-max; a constant channel becomes 0.5). ``features`` (n, d) on the patch ``grid`` (h, w);
    ``size``: the output (H, W) or side (default: the grid), upsampled bilinearly.
    """
    h, w = int(grid[0]), int(grid[1])
    x = _finite(features, "patch features")
    x = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    comps = vh[:3]
    rows = torch.arange(comps.shape[0])
    sign = torch.sign(comps[rows, comps.abs().argmax(1)])
    proj = x @ (comps * sign[:, None]).T  # (n, k <= 3)
    # Components of (numerically) zero variance carry no structure: keep them flat.
    proj = proj * (s[: comps.shape[0]] > s[0] * 1e-5 + 1e-12).float()
    if proj.shape[1] < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - proj.shape[1])], 1)
    lo = torch.quantile(proj, quantile, dim=0)
    hi = torch.quantile(proj, 1 - quantile, dim=0)
    span = hi - lo
    flat = span <= 1e-12 * (1 + hi.abs())
    rgb = ((proj - lo) / torch.where(flat, torch.ones_like(span), span)).clamp(0, 1)
    rgb[:, flat] = 0.5
    image = Image.fromarray((rgb.reshape(h, w, 3) * 255).round().to(torch.uint8).numpy(), "RGB")
    return _resized(image, size, Image.Resampling.BILINEAR)


def concept_grid(
    image: ImageLike,
    spatial: Tensor,
    grid: tuple[int, int],
    cell: int = 96,
    cols: int | None = None,
) -> Image.Image:
    """One ``cell``-pixel heat map per token of ``spatial`` (n, r) on ``grid`` (h, w), ``cols``
    a row (default: up to 8), captioned ``t<k> peak <max L[:, k]>``.

    Each map is scaled by its own peak (so weak tokens stay visible; the caption gives the
    absolute peak) and blended (70 / 30) over a grey version of the photo, under a band of
    the token's colour in the other panels.
    """
    maps = _maps(spatial, grid)
    r = maps.shape[0]
    peaks = maps.flatten(1).amax(1)
    up = F.interpolate(maps[None], size=(cell, cell), mode="nearest")[0]
    heat = heatmap((up / peaks.clamp_min(1e-12)[:, None, None]).numpy()).astype(np.float32)
    gray = np.asarray(to_pil(image).convert("L").resize((cell, cell), Image.Resampling.BILINEAR))
    blend = 0.7 * heat + 0.3 * gray[None, :, :, None].astype(np.float32)
    # a band above each map in the token's colour: the legend of the argmax and overlay panels
    band = np.broadcast_to(palette(r)[:, None, None], (r, max(3, cell // 16), cell, 3))
    tiles = np.concatenate([band, np.round(blend).astype(np.uint8)], axis=1)
    cells = [(Image.fromarray(tiles[k]), f"t{k} peak {float(peaks[k]):.2f}") for k in range(r)]
    cols = cols or min(r, 8)
    rows = [cells[i : i + cols] for i in range(0, r, cols)]
    return compose_panel(rows, pad=4, font_size=max(9, min(13, cell // 8)))


def concept_views(
    image: ImageLike,
    spatial: Tensor,
    dense: Tensor,
    lowrank: Tensor,
    grid: tuple[int, int],
    cell: int,
    *,
    tokens: Sequence[int] | None = None,
    alpha: float = 0.45,
    token_cell: int = 96,
    cols: int | None = None,
) -> dict[str, Image.Image]:
    """The pictures of one image that ``stellar viz`` and the explorer show, ``cell``-pixel
    squares: ``photo``, ``concepts`` (:func:`concept_overlay` of ``tokens``), ``argmax``,
    ``pca_dense``, ``pca_lowrank`` (of ``dense`` and ``lowrank``, (n, d)), and ``tokens``
    (:func:`concept_grid` of ``token_cell``-pixel maps, ``cols`` a row); ``spatial`` (n, r)."""
    photo = to_pil(image).resize((cell, cell), Image.Resampling.BICUBIC)
    return {
        "photo": photo,
        "concepts": concept_overlay(photo, spatial, grid, tokens, alpha),
        "argmax": argmax_segmentation(spatial, grid, size=cell),
        "pca_dense": pca_rgb(dense, grid, size=cell),
        "pca_lowrank": pca_rgb(lowrank, grid, size=cell),
        "tokens": concept_grid(photo, spatial, grid, cell=token_cell, cols=cols),
    }


# ---------------------------------------------------------------------------- layout
@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if width <= 0 or draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def compose_panel(
    rows: Sequence[Sequence[Cell]],
    title: str | None = None,
    pad: int = 6,
    font_size: int = 13,
) -> Image.Image:
    """A figure of ``rows`` of cells, each an image (PIL or tensor) or ``(image, caption)``, top-
    aligned, ``pad`` pixels apart (rows may differ in width), with an optional title on top."""
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = int(probe.textbbox((0, 0), "Ag[y", font=font)[3]) + 2
    parsed = [
        [(to_pil(c[0]), c[1]) if isinstance(c, tuple) else (to_pil(c), None) for c in row]
        for row in rows
    ]
    heights = [
        max((im.height for im, _ in r), default=0) + (line if any(cap for _, cap in r) else 0)
        for r in parsed
    ]
    widths = [sum(im.width for im, _ in r) + pad * (len(r) - 1) for r in parsed]
    top = line + pad if title else 0
    width = max(widths) + 2 * pad
    height = top + sum(heights) + pad * (len(parsed) + 1)
    if title:
        width = max(width, int(probe.textlength(title, font=font)) + 2 * pad)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    y = top + pad
    for r, h in zip(parsed, heights, strict=True):
        has_caption = any(cap for _, cap in r)
        x = pad
        for im, caption in r:
            if caption:
                draw.text((x, y), _fit(draw, caption, font, im.width), fill=(0, 0, 0), font=font)
            canvas.paste(im, (x, y + (line if has_caption else 0)))
            x += im.width + pad
        y += h + pad
    return canvas
