"""Image-quality metrics and Fréchet-distance maths for the reconstruction probe.

- :func:`psnr` and :func:`ssim` work per image on (B, C, H, W) batches.
- :func:`ssim` follows Wang et al. 2004 with an 11×11 Gaussian window (σ 1.5), K1 0.01,
  K2 0.03, population covariance. It is evaluated on the *valid* region (window fully inside
  the image), which is exactly what ``skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` averages after cropping its
  reflect-padded maps by the window radius; channels are averaged.
- :func:`frechet_distance` works in float64 and takes the trace of sqrt(Σ1 Σ2) from the
  eigenvalues of the symmetric PSD matrix sqrt(Σ1) Σ2 sqrt(Σ1), which shares its spectrum
  with Σ1 Σ2; negative round-off eigenvalues are clamped to 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PSNR_MAX = 100.0  # dB, the PSNR of identical images
_MIN_RELATIVE_MSE = 10 ** (-PSNR_MAX / 10)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B,) PSNR in dB of (B, C, H, W) images in ``[0, data_range]``, float32 (float64 for
    float64 input), capped at :data:`PSNR_MAX` (identical images): an infinite value would make
    a whole dataset's mean infinite."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    mse = (x.to(dtype) - y.to(dtype)).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(data_range**2 * _MIN_RELATIVE_MSE))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B,) SSIM (mean over the valid region and the channels) of (B, C, H, W) images in
    ``[0, data_range]``, H, W >= 11; C1 = (0.01 L)², C2 = (0.03 L)² with L = ``data_range``;
    float32 (float64 for float64 input)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    b, c, h, w = x.shape
    x = x.to(dtype).reshape(b * c, 1, h, w)
    y = y.to(dtype).reshape(b * c, 1, h, w)
    win_size = 11
    r = torch.arange(win_size, dtype=dtype, device=x.device) - (win_size - 1) / 2
    g = torch.exp(-0.5 * (r / 1.5) ** 2)
    g = g / g.sum()
    # all five moments go through one separable valid convolution
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1).reshape(b * c * 5, 1, h, w)
    filt = F.conv2d(stack, g.view(1, 1, win_size, 1))
    filt = F.conv2d(filt, g.view(1, 1, 1, win_size))
    filt = filt.reshape(b * c, 5, h - win_size + 1, w - win_size + 1)
    ux, uy, uxx, uyy, uxy = filt.unbind(dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(b, -1).mean(dim=1)


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))`` between
    N(mu1, sigma1) and N(mu2, sigma2), (D,) means and (D, D) symmetric PSD covariances, in
    float64."""
    mu1, mu2 = mu1.double(), mu2.to(mu1.device).double()
    s1 = sigma1.to(mu1.device).double()
    s2 = sigma2.to(mu1.device).double()
    # symmetrise so eigh sees exactly symmetric input despite round-off in the estimates
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    evals, evecs = torch.linalg.eigh(s1)
    root1 = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T  # sqrt(S1), round-off clamped
    inner = root1 @ s2 @ root1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    # a distance: rounding can take identical statistics a hair below zero
    return max(0.0, float(diff @ diff + s1.trace() + s2.trace() - 2.0 * tr_covmean))
