"""The online clustering terms (arXiv 2602.01905): Sinkhorn-Knopp targets of cluster logits,
the soft cross-entropy that trains the heads against them, and set alignment, which matches
masked-view tokens to main-view tokens by optimal transport (Sinkhorn again) first.

The heads themselves (:class:`stellar.models.networks.OnlineClustering`) are model
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


# ---------------------------------------------------------------------------- set alignment
# Predicted views are grouped **image-major**: row ``p`` of ``preds`` belongs to image
# ``p // V`` with ``V = P // B`` views per image (as ``targets.repeat_interleave(V, 0)``), as the
# reference fixture holds: ``match.index``/``match.plan`` are reproduced exactly with
# ``repeat_interleave`` and not with ``repeat``.


def _image_of_view(n_pred: int, n_images: int, device: torch.device) -> torch.Tensor:
    # a count that is not a multiple would silently pair views with the wrong images
    if n_images < 1 or n_pred % n_images != 0:
        raise ValueError(
            f"expected the number of predicted views ({n_pred}) to be a multiple of the "
            f"number of target images ({n_images})"
        )
    return torch.arange(n_pred, device=device) // (n_pred // n_images)


@torch.no_grad()
def sinkhorn_match(
    preds: torch.Tensor,
    targets: torch.Tensor,
    eps: float = 0.1,
    n_iterations: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match each predicted token ``preds`` (P, r, d), P = B·V image-major views, to a token
    of its image's ``targets`` (B, r_t, d) by entropic OT on the Euclidean cost: log-domain
    Sinkhorn from ``u = v = 0``, match = argmax of the plan over targets; fp32, autocast off.

    Returns ``index`` (P, r) int64 in [0, r_t) and the detached ``plan`` (P, r, r_t).
    """
    img = _image_of_view(preds.shape[0], targets.shape[0], preds.device)
    with torch.autocast(device_type=preds.device.type, enabled=False):
        p = preds.detach().float()
        t = targets.detach().float()[img]  # (P, r_t, d) image-major
        # The direct difference kernel: the matmul shortcut loses precision for near-equal
        # tokens, and the full (P, r, r_t, d) difference tensor would not fit for real sizes.
        cost = torch.cdist(p, t, compute_mode="donot_use_mm_for_euclid_dist")  # (P, r, r_t)
        u = cost.new_zeros(cost.shape[:2])
        v = cost.new_zeros(cost.shape[0], cost.shape[2])
        for _ in range(n_iterations):
            u = -eps * torch.logsumexp((v.unsqueeze(1) - cost) / eps, dim=2)
            v = -eps * torch.logsumexp((u.unsqueeze(2) - cost) / eps, dim=1)
        plan = torch.exp((u.unsqueeze(2) + v.unsqueeze(1) - cost) / eps)
    return plan.argmax(dim=2), plan


def set_alignment_loss(
    pred_logits: torch.Tensor,
    target_assignments: torch.Tensor,
    match_index: torch.Tensor,
    temp: float = 0.12,
) -> torch.Tensor:
    """:func:`~stellar.losses.clustering.cross_entropy_soft` of the masked-view tokens' logits
    ``pred_logits`` (P, r, K) against the detached Sinkhorn targets ``target_assignments``
    (B, r_t, K) of the main-view tokens they are matched to (``match_index`` (P, r), from
    :func:`sinkhorn_match`); a scalar fp32 loss."""
    img = _image_of_view(match_index.shape[0], target_assignments.shape[0], match_index.device)
    matched = target_assignments.detach()[img.unsqueeze(1), match_index.long()]  # (P, r, K)
    return cross_entropy_soft(pred_logits, matched, temp)
