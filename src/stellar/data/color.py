"""Per-sample colour augmentation on the device: jitter, grayscale and Gaussian blur in the
semantics of torchvision's ``ColorJitter``, ``RandomGrayscale`` and ``GaussianBlur``, each on a
whole batch with the random parameters of every sample drawn at once; its settings are the
``augment.color`` section of a training config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from stellar.errors import UsageError
from stellar.schema import bounded

# ITU-R 601-2 luma weights, as PIL and torchvision use.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _uniform(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """U[0, 1) float32 on ``device``, drawn on the generator's own device."""
    src = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=src).to(device)


def _pair(value: Sequence[float], name: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not 0 < lo <= hi:
        raise UsageError(f"{name}: expected (low, high) with 0 < low <= high, got {value}")
    return lo, hi


def rgb_to_grayscale(img: Tensor) -> Tensor:
    """(..., 3, H, W) RGB -> (..., 1, H, W) luma with ITU-R 601 weights."""
    r, g, b = img.unbind(-3)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _per_sample(factor: Tensor | float, img: Tensor) -> Tensor:
    f = torch.as_tensor(factor, dtype=img.dtype, device=img.device)
    return f.reshape(f.shape + (1,) * (img.ndim - f.ndim))


def _blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    return (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)


def adjust_contrast(img: Tensor, factor: Tensor | float) -> Tensor:
    """Blend with the mean of each image's grayscale by ``factor``. img (N, 3, H, W)."""
    mean = rgb_to_grayscale(img).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, _per_sample(factor, img))


def adjust_saturation(img: Tensor, factor: Tensor | float) -> Tensor:
    """Blend with the image's own grayscale by ``factor``. img (N, 3, H, W)."""
    return _blend(img, rgb_to_grayscale(img), _per_sample(factor, img))


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
    h6 = h6 + 6.0 * _per_sample(factor, img)[..., 0, :, :]
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
    [0, 1]; a sample not selected for a step passes through that step bit-exactly. The field
    ranges are checked where configs are built (:func:`stellar.schema.build`).
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
            x = sel(jitter, (_per_sample(fb, x) * x).clamp(0.0, 1.0), x)
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
