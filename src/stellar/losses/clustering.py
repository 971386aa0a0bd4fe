"""The online clustering terms (arXiv 2602.01905): Sinkhorn-Knopp targets of cluster logits
and the soft cross-entropy that trains the heads against them.

The heads themselves (:class:`stellar.models.clustering.OnlineClustering`) are model
parameters and live beside the model. :func:`sinkhorn_knopp` expects scores that are *already
divided by the Sinkhorn temperature*: the reference fixture ``sinkhorn.output`` equals
``sinkhorn_knopp(sinkhorn.input)`` with no further scaling, and ``cluster.assignments`` equals
``sinkhorn_knopp(cluster.logits / 0.06)``; :func:`clustering_targets` applies the temperature.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

# Offset added after subtracting the column max: keeps exp() far from underflow for the
# best-scoring entries while exp(50) ~ 5e21 leaves fp32 ample headroom for the column sums.
_EXP_OFFSET = 50.0
_SUM_EPS = 1e-8


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, n_iterations: int = 3) -> torch.Tensor:
    """Balance temperature-scaled scores (N, K) into detached fp32 soft cluster assignments
    (N, K), rows summing to 1, autocast off.

    Under ``torch.distributed`` the column max and sums are all-reduced, so each rank's rows
    equal those of one process run on every rank's rows (ranks may hold different counts).
    """
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    with torch.autocast(device_type=scores.device.type, enabled=False):
        q = scores.detach().float()
        # A rank with no rows still joins the collectives; -inf is the identity of MAX.
        empty = q.shape[0] == 0
        col_max = q.new_full((q.shape[1],), float("-inf")) if empty else q.amax(dim=0)
        if distributed:
            dist.all_reduce(col_max, op=dist.ReduceOp.MAX)
        q = torch.exp(q - col_max + _EXP_OFFSET)
        for _ in range(n_iterations):
            col_sum = q.sum(dim=0)
            if distributed:
                dist.all_reduce(col_sum, op=dist.ReduceOp.SUM)
            q = q / (col_sum + _SUM_EPS)
            q = q / (q.sum(dim=1, keepdim=True) + _SUM_EPS)
    return q


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
