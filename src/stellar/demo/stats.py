"""Is a gap between two models more than sampling noise? (docs/CONCEPTS.md)

Every model is measured on the same validation scenes, so gaps are paired: the standard error
of the mean per-sample difference, or a paired bootstrap over scenes for mIoU.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from stellar.eval.segmentation import segmentation_scores


def paired_gap(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Mean of ``a - b`` and its standard error (0 for one sample), for (N,) per-sample values
    of two models on the same samples."""
    d = a.double() - b.double()
    se = float(d.std() / math.sqrt(d.numel())) if d.numel() > 1 else 0.0
    return float(d.mean()), se


def pooled_miou(confusions: Tensor) -> float:
    """mIoU of per-scene confusion matrices (N, C, C) summed over the scenes."""
    return segmentation_scores(confusions.sum(0))["miou"]


def miou_gap(a: Tensor, b: Tensor, n_boot: int = 200, seed: int = 0) -> tuple[float, float]:
    """mIoU gap of two models' (N, C, C) per-scene confusion matrices (rows: target, columns:
    prediction) and its standard error over ``n_boot`` paired bootstrap resamples of the scenes."""
    gap = pooled_miou(a) - pooled_miou(b)
    g = torch.Generator().manual_seed(seed)
    n = a.shape[0]
    gaps = []
    for _ in range(n_boot):
        idx = torch.randint(n, (n,), generator=g)
        gaps.append(pooled_miou(a[idx]) - pooled_miou(b[idx]))
    return gap, float(torch.tensor(gaps, dtype=torch.float64).std())


def gap_with_stderr(key: str, a: Tensor, b: Tensor, seed: int = 0) -> tuple[float, float]:
    """The gap of metric ``key`` between two models' per-sample values, and its std. error."""
    return miou_gap(a, b, seed=seed) if key == "seg_miou" else paired_gap(a, b)


def gap_words(key: str, gap: float, se: float) -> str:
    """A gap and twice its standard error in the metric's unit (dB for PSNR, else points)."""
    scale, unit = (1, " dB") if key == "psnr" else (100, " points")
    return f"{gap * scale:+.1f}{unit} (2 × std. error: {2 * se * scale:.1f}{unit})"
