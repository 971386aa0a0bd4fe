"""Concept localization on concept scenes (defined in docs/CONCEPTS.md; not a score of the paper
or the official code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def token_masks(spatial: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Thresholded token maps in pixels: (B, n, r) -> (B, r, H, W) bool, threshold 1/r."""
    b, _, r = spatial.shape
    maps = spatial.float().transpose(1, 2).reshape(b, r, *grid)
    up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    if r == 1:  # the single token's map is 1 everywhere, never above 1/r: it covers the image
        return torch.ones_like(up, dtype=torch.bool)
    return up > 1.0 / r


def localization_scores(spatial: Tensor, grid: tuple[int, int], instances: Tensor) -> Tensor:
    """Best IoU over tokens for every object: ``spatial`` (B, n, r) on the patch ``grid`` (h, w),
    ``instances`` (B, H, W) int64 (0 = background, 1..K objects) -> (M,), one per object present.
    """
    k = int(instances.max())
    if k == 0:
        return torch.empty(0)
    tok = token_masks(spatial, grid, tuple(instances.shape[-2:])).flatten(2).float()  # (B, r, P)
    ids = torch.arange(1, k + 1, device=instances.device)
    obj = (instances.unsqueeze(1) == ids.view(1, -1, 1, 1)).flatten(2).float()  # (B, K, P)
    inter = tok @ obj.transpose(1, 2)  # (B, r, K)
    union = obj.sum(-1).unsqueeze(1) + tok.sum(-1, keepdim=True) - inter
    iou = (inter / union.clamp_min(1)).amax(1)  # (B, K)
    return iou[obj.sum(-1) > 0]
