"""Set alignment between masked-view and main-view sparse tokens (arXiv 2602.01905).

Predicted views are grouped **image-major**: row ``p`` of ``preds`` belongs to image
``p // V`` with ``V = P // B`` views per image (as ``targets.repeat_interleave(V, 0)``). This is
what the reference fixture holds: ``match.index``/``match.plan`` are reproduced exactly with
``repeat_interleave`` and not with ``repeat``.
"""

from __future__ import annotations

import torch

from stellar.losses.clustering import cross_entropy_soft


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
