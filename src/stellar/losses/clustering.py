"""Sinkhorn targets of cluster logits and the soft cross-entropy that trains the heads.

The heads themselves (:class:`stellar.models.clustering.OnlineClustering`) are model
parameters and live beside the model; these are the pure functions of the objective's online
clustering terms (arXiv 2602.01905).
"""

from __future__ import annotations

import torch

from stellar.losses.sinkhorn import sinkhorn_knopp

__all__ = ["clustering_targets", "cross_entropy_soft"]


@torch.no_grad()
def clustering_targets(
    logits: torch.Tensor, sk_temp: float = 0.06, n_iterations: int = 3
) -> torch.Tensor:
    """Detached Sinkhorn-Knopp targets of cluster logits.

    Batch dims are flattened into rows, ``sinkhorn_knopp(logits / sk_temp)`` is applied
    (distributed-aware), and the shape restored.

    Args:
        logits: (..., K) cluster logits.
        sk_temp: Sinkhorn temperature, > 0.
        n_iterations: Sinkhorn rounds, >= 1.

    Returns:
        (..., K) fp32 targets; each row sums to 1.
    """
    flat = logits.detach().float().reshape(-1, logits.shape[-1])
    return sinkhorn_knopp(flat / sk_temp, n_iterations=n_iterations).reshape(logits.shape)


def cross_entropy_soft(
    logits: torch.Tensor, targets: torch.Tensor, temp: float = 0.12
) -> torch.Tensor:
    """Soft-target cross-entropy, averaged over every row.

    ``mean over rows of -sum_K targets * log_softmax(logits / temp)``; all leading dims count
    as rows (matches ``cluster.loss``/``cls_cluster.loss``). fp32 with autocast off; gradients
    flow into both arguments (pass detached targets).

    Args:
        logits: (..., K) logits.
        targets: (..., K) probabilities, same shape as ``logits``.
        temp: Softmax temperature, > 0.

    Returns:
        Scalar fp32 loss.
    """
    if logits.shape != targets.shape:  # broadcasting would pair the wrong rows silently
        raise ValueError(
            "cross_entropy_soft expects logits and targets of the same shape (..., K), got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_p = torch.log_softmax(logits.float() / temp, dim=-1)
        return -(targets.float() * log_p).sum(dim=-1).mean()
