"""Batched multi-view augmentation on the device (torch ops only, no torchvision): crops, colour
(jitter, grayscale and blur in torchvision's semantics), and the patches each masked view keeps.

The random parameters of every image and view are drawn at once from an optional
``torch.Generator`` (a seeded one reproduces the output exactly on a given device), never in a
Python loop over images or views. Crops follow torchvision's ``RandomResizedCrop`` sampling but
resample a whole batch with one bicubic ``grid_sample``, without antialiasing: harmless for the
mild down-scaling of the recipe (a 256 canvas to 224 / 96 px views).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from stellar.errors import UsageError
from stellar.schema import bounded

# The training views' crop aspect-ratio range and flip probability (torchvision's defaults).
RATIO = (3 / 4, 4 / 3)
FLIP_P = 0.5
TRIES = 10  # candidate boxes per crop before the centre-crop fallback


def _uniform(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """U[0, 1) float32 on ``device``, drawn on the generator's own device."""
    src = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=src).to(device)


def _pair(value: Sequence[float], name: str, top: float = math.inf) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not 0 < lo <= hi <= top:
        bound = "" if top == math.inf else f" <= {top:g}"
        raise UsageError(f"{name}: expected (low, high) with 0 < low <= high{bound}, got {value}")
    return lo, hi


def rgb_to_grayscale(img: Tensor) -> Tensor:
    """(..., 3, H, W) RGB -> (..., 1, H, W) luma, ITU-R 601-2 weights as PIL and torchvision."""
    r, g, b = img.unbind(-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def _blend(img: Tensor, other: Tensor | float, factor: Tensor | float) -> Tensor:
    """``factor * img + (1 - factor) * other`` in [0, 1], ``factor`` (N,) per image (N, 3, H, W)."""
    f = torch.as_tensor(factor, dtype=img.dtype, device=img.device).reshape(-1, 1, 1, 1)
    return (f * img + (1.0 - f) * other).clamp(0.0, 1.0)


def adjust_contrast(img: Tensor, factor: Tensor | float) -> Tensor:
    """Blend with the mean of each image's grayscale by ``factor``. img (N, 3, H, W)."""
    mean = rgb_to_grayscale(img).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, factor)


def adjust_saturation(img: Tensor, factor: Tensor | float) -> Tensor:
    """Blend with the image's own grayscale by ``factor``. img (N, 3, H, W)."""
    return _blend(img, rgb_to_grayscale(img), factor)


def adjust_hue(img: Tensor, factor: Tensor | float) -> Tensor:
    """Rotate the hue by ``factor`` turns (in [-0.5, 0.5]) in HSV space. img (N, 3, H, W).

    RGB -> HSV -> RGB fused: with v = max, d = max - min (= v * s) and the hue h6 in sixths
    of a turn, each channel is ``v - d * clamp(min(k, 4 - k), 0, 1)``,
    ``k = (n + h6) mod 6`` with n = 5, 3, 1 for R, G, B.
    """
    r, g, b = img.unbind(-3)
    maxc = img.amax(-3)
    d = maxc - img.amin(-3)
    inv = 1.0 / torch.where(d > 0, d, torch.ones_like(d))
    # Hue from whichever channel is the maximum; ties give the same hue, gray pixels 0.
    h6 = torch.where(
        maxc == r, (g - b) * inv, torch.where(maxc == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0)
    )
    h6 = h6 + 6.0 * torch.as_tensor(factor, dtype=img.dtype, device=img.device).reshape(-1, 1, 1)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=img.dtype, device=img.device).view(3, 1, 1)
    k = torch.remainder(n + h6.unsqueeze(-3), 6.0)
    return maxc.unsqueeze(-3) - d.unsqueeze(-3) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def gaussian_blur(img: Tensor, sigma: Tensor | float, kernel_size: int = 9) -> Tensor:
    """Separable Gaussian blur of ``img`` (N, C, H, W) float with a per-sample ``sigma`` (N,)
    or scalar, in pixels; reflect padding, so the odd ``kernel_size`` (checked by
    :class:`ColorAugment`) must be smaller than twice H and W (torch's error otherwise)."""
    n, c, hh, ww = img.shape
    r = kernel_size // 2
    sig = torch.as_tensor(sigma, dtype=img.dtype, device=img.device).expand(n)
    x = torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x[None] / sig[:, None]) ** 2)
    k = (k / k.sum(-1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, K)
    # One grouped conv per axis: every (sample, channel) plane gets its own kernel.
    y = F.pad(img.reshape(1, n * c, hh, ww), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, hh, ww)


@dataclass
class ColorAugment:
    """Per-sample colour jitter, grayscale and Gaussian blur (torchvision semantics), and the
    ``augment.color`` section of a training config; the defaults are the STELLAR recipe's.

    Order (fixed, unlike torchvision's random jitter order): with probability ``jitter_p``
    brightness -> contrast -> saturation -> hue, each factor drawn per sample (uniform in
    [max(0, 1 - x), 1 + x], hue in [-x, x]; a strength of 0 skips its step); then grayscale
    with probability ``gray_p`` (601 luma copied to the three channels); then blur with
    probability ``blur_p``, sigma uniform in ``blur_sigma``. Every applied step clamps to
    [0, 1]; a sample not selected for a step passes through that step bit-exactly.
    """

    brightness: float = bounded(0.4, low=0)
    contrast: float = bounded(0.4, low=0)
    saturation: float = bounded(0.2, low=0)
    hue: float = bounded(0.1, low=0, high=0.5)
    jitter_p: float = bounded(0.8, low=0, high=1)
    gray_p: float = bounded(0.2, low=0, high=1)
    blur_p: float = bounded(0.5, low=0, high=1)
    blur_kernel: int = bounded(9, low=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self) -> None:
        _pair(self.blur_sigma, "augment.color.blur_sigma")
        if self.blur_kernel % 2 == 0:
            raise UsageError(
                f"augment.color.blur_kernel: expected an odd size, got {self.blur_kernel}"
            )

    def __call__(self, views: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``views`` (..., 3, H, W), float in [0, 1]; same shape and dtype out.
        ``generator`` (on any device; None: the global RNG) is the source of randomness."""
        x = views.reshape(-1, *views.shape[-3:]).float()
        u = _uniform((x.shape[0], 8), generator, x.device)

        def sel(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
            return torch.where(mask[:, None, None, None], new, old)

        strengths = (self.brightness, self.contrast, self.saturation)
        ranges = [(max(0.0, 1.0 - s), 1.0 + s) for s in strengths] + [(-self.hue, self.hue)]
        fb, fc, fs, fh = (lo + (hi - lo) * u[:, 1 + k] for k, (lo, hi) in enumerate(ranges))
        jitter = u[:, 0] < self.jitter_p
        if self.brightness:
            x = sel(jitter, _blend(x, 0.0, fb), x)  # towards black
        if self.contrast:
            x = sel(jitter, adjust_contrast(x, fc), x)
        if self.saturation:
            x = sel(jitter, adjust_saturation(x, fs), x)
        if self.hue:
            x = sel(jitter, adjust_hue(x, fh), x)
        if self.gray_p > 0:
            x = sel(u[:, 5] < self.gray_p, rgb_to_grayscale(x).expand_as(x), x)
        if self.blur_p > 0:
            lo, hi = self.blur_sigma
            sigma = lo + (hi - lo) * u[:, 7]
            blurred = gaussian_blur(x, sigma, self.blur_kernel).clamp(0.0, 1.0)
            x = sel(u[:, 6] < self.blur_p, blurred, x)
        return x.to(views.dtype).view(views.shape)


def _as_float(x: Tensor) -> Tensor:
    """uint8 -> [0, 1] float32; half precision -> float32 (crop coordinates need the bits)."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _fill_padding(canvas: Tensor, h: Tensor, w: Tensor) -> Tensor:
    """Replicate each image's last valid row / column into its padding.

    Bicubic taps reach two pixels beyond a crop; with the padding replaced by the edge pixels,
    sampling near the valid border behaves exactly like resizing the valid image alone.
    """
    b, c, hc, wc = canvas.shape
    rows = torch.minimum(torch.arange(hc, device=canvas.device)[None], h[:, None] - 1)
    cols = torch.minimum(torch.arange(wc, device=canvas.device)[None], w[:, None] - 1)
    out = canvas.gather(2, rows[:, None, :, None].expand(b, c, hc, wc))
    return out.gather(3, cols[:, None, None, :].expand(b, c, hc, wc))


def random_resized_crop(
    canvas: Tensor,
    size: Tensor,
    out_size: int,
    n_views: int,
    scale: Sequence[float] = (0.36, 1.0),
    ratio: Sequence[float] = RATIO,
    generator: torch.Generator | None = None,
    flip_p: float = FLIP_P,
) -> Tensor:
    """``n_views`` RandomResizedCrop + horizontal flip views of every image, in one resample
    that never reads outside the valid region. ``canvas`` (B, C, Hc, Wc) uint8 or float in
    [0, 1]; ``size`` (B, 2) the valid (h, w) at its top-left; ``scale`` a fraction of the valid
    area; ``generator`` on any device (None: the global RNG).

    Returns views (B, n_views, C, out_size, out_size) float32 in [0, 1].
    """
    b, c, hc, wc = canvas.shape
    (s0, s1), (r0, r1) = _pair(scale, "scale", 1), _pair(ratio, "ratio")
    v = n_views
    x = _as_float(canvas)
    dev = x.device
    hi, wi = size.to(dev).unbind(1)
    h = hi.to(torch.float32)[:, None]  # (B, 1), broadcast over views
    w = wi.to(torch.float32)[:, None]
    u = _uniform((b, v, 4 * TRIES + 1), generator, dev)
    u_area, u_ratio, u_top, u_left = u[..., :-1].unflatten(-1, (TRIES, 4)).unbind(-1)
    area = (h * w)[..., None] * (s0 + (s1 - s0) * u_area)  # (B, V, T)
    aspect = torch.exp(math.log(r0) + (math.log(r1) - math.log(r0)) * u_ratio)
    cw = torch.round(torch.sqrt(area * aspect))
    ch = torch.round(torch.sqrt(area / aspect))
    fits = (cw > 0) & (cw <= w[..., None]) & (ch > 0) & (ch <= h[..., None])
    first = fits.to(torch.uint8).argmax(-1, keepdim=True)  # first fitting try (0 if none)
    found = fits.any(-1)
    cw, ch = cw.gather(-1, first)[..., 0], ch.gather(-1, first)[..., 0]
    top = torch.floor(u_top.gather(-1, first)[..., 0] * (h - ch + 1)).clamp_min(0)
    left = torch.floor(u_left.gather(-1, first)[..., 0] * (w - cw + 1)).clamp_min(0)
    top, left = torch.minimum(top, h - ch), torch.minimum(left, w - cw)

    # Centre-crop fallback: the whole valid region with its aspect clamped to `ratio`.
    in_ratio = w / h
    fw = torch.where(in_ratio > r1, torch.round(h * r1), w)
    fh = torch.where(in_ratio < r0, torch.round(w / r0), h)
    cw = torch.where(found, cw, fw)
    ch = torch.where(found, ch, fh)
    top = torch.where(found, top, torch.floor((h - fh) / 2))
    left = torch.where(found, left, torch.floor((w - fw) / 2))
    flip = u[..., -1] < flip_p  # (B, V)

    # Output pixel centres as fractions of the crop; a flip mirrors the fractions.
    frac = (torch.arange(out_size, device=dev, dtype=torch.float32) + 0.5) / out_size
    fx = torch.where(flip[..., None], 1.0 - frac, frac)
    gx = 2.0 * (left[..., None] + fx * cw[..., None]) / wc - 1.0  # (B, V, out)
    gy = 2.0 * (top[..., None] + frac * ch[..., None]) / hc - 1.0
    grid = torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), dim=-1)
    # All views of an image share one grid_sample batch entry: (B, V * out, out, 2).
    grid = grid.reshape(b, v * out_size, out_size, 2).to(x.dtype)
    src = _fill_padding(x, hi, wi)
    views = F.grid_sample(src, grid, mode="bicubic", padding_mode="border", align_corners=False)
    views = views.view(b, c, v, out_size, out_size).transpose(1, 2).clamp_(0.0, 1.0)
    return views.contiguous()


FocalMode = Literal["gaussian", "block"]  # the config takes these names (or null)
# The Gaussian focus's sigma, uniform in this range (a fraction of the grid side).
SIGMA_RANGE = (0.1, 0.5)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Number of patches a view keeps: ``floor(num_patches * (1 - mask_ratio))``, at least 1
    (a ValueError otherwise). A 1e-6 tolerance keeps float round-off from dropping a patch
    (10 * (1 - 0.9) = 0.99999...)."""
    n_keep = int(math.floor(num_patches * (1.0 - mask_ratio) + 1e-6))
    if n_keep < 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} keeps no patch of {num_patches}; expected a lower ratio"
        )
    return n_keep


@dataclass(frozen=True)
class ViewPlan:
    """The views of one training step, per image, besides the main view (all colour-augmented)."""

    masked: int = 0  # masked global views (the first: a copy of the main view's crop)
    local: int = 0
    second: bool = False  # a second global view (global alignment)


@dataclass
class MultiViewAugment:
    """The STELLAR multi-view pipeline on device, and the ``augment`` section of a training
    config (the paper's sizes and counts; scaled down for CPU presets): :meth:`make` builds
    exactly the views a training step's :class:`ViewPlan` asks for, :meth:`mask` the patches
    the masked ones keep.
    """

    global_size: int = bounded(224, low=1)
    local_size: int = bounded(96, low=1)
    n_local: int = bounded(8, low=0)  # n_local and n_masked: the views per image of a step
    n_masked: int = bounded(8, low=0)
    global_scale: tuple[float, float] = (0.36, 1.0)
    local_scale: tuple[float, float] = (0.06, 0.36)
    mask_ratio: float = bounded(0.8, low=0, high=1, high_open=True)
    focal_mode: FocalMode | None = "gaussian"
    focal_prob: float = bounded(0.5, low=0, high=1)
    color: ColorAugment = field(default_factory=ColorAugment)

    def __post_init__(self) -> None:
        """Refuse bad scales and a blur kernel too large for the smallest view, when built."""
        for name in ("global_scale", "local_scale"):  # fractions of the area
            _pair(getattr(self, name), f"augment.{name}", 1)
        side = min(self.global_size, self.local_size if self.n_local else self.global_size)
        if self.color.blur_p and self.color.blur_kernel // 2 >= side:
            raise UsageError(
                f"augment.color.blur_kernel: expected at most {2 * side - 1} to blur the "
                f"{side} px views (or blur_p=0), got {self.color.blur_kernel}"
            )

    def make(
        self,
        canvas: Tensor,
        size: Tensor,
        plan: ViewPlan,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The main view ``image`` (B, 3, G, G), not colour-augmented, and exactly the views
        ``plan`` asks for: ``masked_views`` (B·M, 3, G, G), image-major, the first of each image
        a coloured copy of the main view's crop; ``local_views`` (B·L, 3, l, l); ``second_view``
        (B, 3, G, G); all float32 in [0, 1]. ``canvas`` and ``size`` as
        :func:`random_resized_crop` takes them."""
        crops = max(1, plan.masked, 2 if plan.second else 1)
        x = _as_float(canvas)
        global_views = random_resized_crop(
            x, size, self.global_size, crops, self.global_scale, generator=generator
        )
        local = None
        if plan.local:
            local = random_resized_crop(
                x, size, self.local_size, plan.local, self.local_scale, generator=generator
            )
            local = self.color(local, generator)
        return {"image": global_views[:, 0], **self.colored(global_views, local, plan, generator)}

    def colored(
        self,
        global_views: Tensor | None,
        local_views: Tensor | None,
        plan: ViewPlan,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The views of ``plan`` from crops already made, (B, V, 3, H, W): the global ones
        colour-augmented here, the local ones taken as they are."""
        out = {}
        if local_views is not None and plan.local:
            out["local_views"] = local_views[:, : plan.local].flatten(0, 1)
        if global_views is not None and plan.masked:
            masked = self.color(global_views[:, : plan.masked], generator)
            out["masked_views"] = masked.flatten(0, 1)
        if global_views is not None and plan.second and global_views.shape[1] > 1:
            out["second_view"] = self.color(global_views[:, 1], generator)
        return out

    def mask(
        self, batch: dict[str, Tensor], patch_size: int, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """``batch`` with ``keep_idx`` (B·V, k) int64, the patches each of its ``masked_views``
        keeps (raster indices, ascending per row): the :func:`num_kept` lowest of uniform noise.

        Each view is *focal* with probability ``focal_prob``: ``"gaussian"`` lowers its noise by a
        Gaussian bump (random centre, sigma uniform in ``SIGMA_RANGE`` of the grid side) so the
        kept patches cluster; ``"block"`` keeps the smallest near-square block holding ``n_keep``
        patches (its first ones), at a random position; ``None``: plain random masking.
        """
        if "masked_views" not in batch:
            return batch
        views = batch["masked_views"]
        batch_size, grid_h, grid_w = len(views), *(side // patch_size for side in views.shape[-2:])
        lo, hi = SIGMA_RANGE
        n = grid_h * grid_w
        n_keep = num_kept(n, self.mask_ratio)
        kw = {"generator": generator, "device": views.device}

        noise = torch.rand(batch_size, n, **kw)
        if self.focal_mode is not None:
            focal = torch.rand(batch_size, **kw) < self.focal_prob  # (B,)
            rows = torch.arange(grid_h, device=noise.device).repeat_interleave(grid_w)  # (n,)
            cols = torch.arange(grid_w, device=noise.device).repeat(grid_h)
            if self.focal_mode == "gaussian":
                centre = torch.rand(batch_size, 2, **kw)
                sigma = lo + (hi - lo) * torch.rand(batch_size, **kw)
                dy = (rows + 0.5) / grid_h - centre[:, :1]  # (B, n)
                dx = (cols + 0.5) / grid_w - centre[:, 1:]
                bump = torch.exp(-(dy.square() + dx.square()) / (2.0 * sigma[:, None].square()))
                noise = torch.where(focal[:, None], noise - bump, noise)
            else:
                # the smallest near-square (bh, bw) block holding n_keep patches inside the grid
                bw = min(math.ceil(math.sqrt(n_keep)), grid_w)
                bh = math.ceil(n_keep / bw)
                if bh > grid_h:
                    bh, bw = grid_h, math.ceil(n_keep / grid_h)
                corner = torch.rand(batch_size, 2, **kw)
                top = (corner[:, :1] * (grid_h - bh + 1)).long()  # (B, 1), in [0, grid_h - bh]
                left = (corner[:, 1:] * (grid_w - bw + 1)).long()
                ri, ci = rows - top, cols - left  # (B, n) block-relative coordinates
                inside = (ri >= 0) & (ri < bh) & (ci >= 0) & (ci < bw)
                # Block patches rank by block raster order, all below the [0, 1) noise range.
                block_rank = (ri * bw + ci).to(noise.dtype) - n
                noise = torch.where(focal[:, None] & inside, block_rank, noise)
        keep = noise.argsort(dim=1)[:, :n_keep]
        batch["keep_idx"] = keep.sort(dim=1).values
        return batch
