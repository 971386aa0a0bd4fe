"""Concept localization and concept purity on concept scenes (defined in docs/CONCEPTS.md).

Neither score exists in the paper or the official code.
"""

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


def _overlap(spatial: Tensor, grid: tuple[int, int], instances: Tensor, k: int):
    """Token masks (B, r, P), object masks (B, K, P) and their overlap (B, r, K) in pixels."""
    masks = token_masks(spatial, grid, tuple(instances.shape[-2:])).flatten(2).float()
    ids = torch.arange(1, k + 1, device=instances.device)
    objects = (instances.unsqueeze(1) == ids.view(1, -1, 1, 1)).flatten(2).float()
    return masks, objects, masks @ objects.transpose(1, 2)


def localization_scores(spatial: Tensor, grid: tuple[int, int], instances: Tensor) -> Tensor:
    """Best IoU over tokens for every object.

    Args:
        spatial: (B, n, r) localisation matrix.
        grid: (h, w) patch grid.
        instances: (B, H, W) int64, 0 = background, 1..K objects.

    Returns:
        (M,) best IoU of each of the M objects present in the batch.
    """
    k = int(instances.max())
    if k == 0:
        return torch.empty(0)
    tok, obj, inter = _overlap(spatial, grid, instances, k)
    union = obj.sum(-1).unsqueeze(1) + tok.sum(-1, keepdim=True) - inter  # (B, r, K)
    iou = (inter / union.clamp_min(1)).amax(1)  # (B, K)
    return iou[obj.sum(-1) > 0]


def token_shape_labels(
    spatial: Tensor,
    grid: tuple[int, int],
    instances: Tensor,
    object_shapes: Tensor,
    min_share: float = 0.5,
) -> Tensor:
    """Shape class of the object holding most of each token's map, or -1.

    Args:
        spatial: (B, n, r); grid: (h, w); instances: (B, H, W) (0 = background).
        object_shapes: (B, K) shape class of instance k+1 (-1 for padding).
        min_share: the object must hold at least this share of the token's map area.

    Returns:
        (B, r) int64 shape class per token, -1 where no object dominates.
    """
    masks, _, inter = _overlap(spatial, grid, instances, object_shapes.shape[1])
    share, best = (inter / masks.sum(-1, keepdim=True).clamp_min(1)).max(-1)
    labels = object_shapes.gather(1, best)
    return torch.where(share >= min_share, labels, torch.full_like(labels, -1))


def kmeans(x: Tensor, k: int, iterations: int = 25, seed: int = 0) -> Tensor:
    """Spherical k-means (k-means++ seeding) of rows of ``x`` (N, d); the cluster of each row."""
    x = F.normalize(x.float(), dim=-1)
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(x.shape[0], (1,), generator=g)]
    for _ in range(1, k):  # k-means++: next centre far (squared chord) from the chosen ones
        dist = (2 - 2 * (x @ centres.T).amax(1)).clamp_min(0)
        pick = torch.multinomial(dist + 1e-12, 1, generator=g)
        centres = torch.cat([centres, x[pick]])
    assign = torch.zeros(x.shape[0], dtype=torch.long)
    for _ in range(iterations):
        assign = (x @ centres.T).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        empty = sums.norm(dim=1) == 0
        centres = torch.where(empty.unsqueeze(1), centres, F.normalize(sums, dim=-1))
    return assign


def cluster_purity(clusters: Tensor, labels: Tensor) -> float:
    """Σ_c max_y |c ∩ y| / N for integer cluster ids and class labels (both (N,))."""
    if clusters.numel() == 0:
        return float("nan")
    n_c, n_y = int(clusters.max()) + 1, int(labels.max()) + 1
    table = torch.zeros(n_c * n_y).index_add_(
        0, clusters * n_y + labels, torch.ones(clusters.numel())
    )
    return float(table.view(n_c, n_y).amax(1).sum() / clusters.numel())


def concept_purity(
    tokens: Tensor, shape_labels: Tensor, k: int = 16, seed: int = 0
) -> dict[str, float]:
    """Purity of k-means clusters of concept tokens w.r.t. the shape they sit on.

    Args:
        tokens: (N, r, d) concept tokens of N images.
        shape_labels: (N, r) from :func:`token_shape_labels` (-1 = left out).
        k: clusters; seed: k-means and permutation seed.

    Returns:
        ``purity``, ``purity_chance`` and ``tokens_on_objects`` (fraction of tokens kept).
    """
    flat, labels = tokens.reshape(-1, tokens.shape[-1]), shape_labels.reshape(-1)
    clusters = kmeans(flat, min(k, flat.shape[0]), seed=seed)
    keep = labels >= 0
    clusters, labels = clusters[keep], labels[keep]
    g = torch.Generator().manual_seed(seed + 1)
    shuffled = clusters[torch.randperm(clusters.numel(), generator=g)]
    return {
        "purity": cluster_purity(clusters, labels),
        "purity_chance": cluster_purity(shuffled, labels),
        "tokens_on_objects": float(keep.float().mean()),
    }
