"""Sinkhorn targets of cluster logits and the soft cross-entropy that trains the heads.

The heads themselves (:class:`stellar.models.clustering.OnlineClustering`) are model
parameters and live beside the model; these are the pure functions of the objective's online
clustering terms (arXiv 2602.01905).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stellar.losses.sinkhorn import sinkhorn_knopp

__all__ = ["clustering_targets", "cross_entropy_soft"]


@torch.no_grad()
def clustering_targets(
    logits: torch.Tensor, sk_temp: float = 0.06, n_iterations: int = 3
) -> torch.Tensor:
    """Detached Sinkhorn-Knopp targets (..., K), fp32, rows summing to 1, of cluster logits
    (..., K): every leading dim is a row of ``sinkhorn_knopp(logits / sk_temp)``."""
    flat = logits.detach().float().reshape(-1, logits.shape[-1])
    return sinkhorn_knopp(flat / sk_temp, n_iterations=n_iterations).reshape(logits.shape)


def cross_entropy_soft(
    logits: torch.Tensor, targets: torch.Tensor, temp: float = 0.12
) -> torch.Tensor:
    """Soft-target cross-entropy of ``logits / temp`` (..., K) against ``targets`` (same shape),
    averaged over every row (matches ``cluster.loss``/``cls_cluster.loss``); fp32 with autocast
    off; pass detached targets.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        rows = logits.float().flatten(0, -2) / temp
        return F.cross_entropy(rows, targets.float().flatten(0, -2))
