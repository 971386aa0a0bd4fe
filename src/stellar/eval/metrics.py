"""PSNR and the Fréchet-distance maths of the reconstruction probe.

:func:`frechet_distance` works in float64 and takes the trace of sqrt(Σ1 Σ2) from the
eigenvalues of the symmetric PSD matrix sqrt(Σ1) Σ2 sqrt(Σ1), which shares its spectrum with
Σ1 Σ2; negative round-off eigenvalues are clamped to 0.
"""

from __future__ import annotations

import torch

PSNR_MAX = 100.0  # dB, the PSNR of identical images


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of (B, C, H, W) images in [0, 1], float32 (float64 for float64 input),
    capped at :data:`PSNR_MAX` (identical images): an infinite value would make a whole
    dataset's mean infinite."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    mse = (x.to(dtype) - y.to(dtype)).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(10 ** (-PSNR_MAX / 10)))


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
