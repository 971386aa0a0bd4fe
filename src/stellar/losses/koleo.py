"""KoLeo spreading regulariser on the sparse tokens of each image (arXiv 2602.01905)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["koleo_loss"]

EPS = 1e-8


def koleo_loss(x: torch.Tensor) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate over the tokens of each image.

    Tokens are L2-normalised; each token's nearest *other* token of the same image is found
    by maximum dot product (diagonal excluded, selection not differentiated), and the loss is
    ``-mean(log(0.5 * ||x_i - x_nn(i) + 1e-8|| + 1e-8))`` over all B·r tokens (the inner norm
    is ``F.pairwise_distance``) over ``x`` (B, r, d), r >= 2, any float dtype. A scalar fp32
    loss, computed with autocast off.
    """
    if x.ndim != 3 or x.shape[1] < 2:
        raise ValueError(f"koleo_loss expects (B, r, d) with r >= 2, got {tuple(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        xn = F.normalize(x.float(), dim=-1, eps=EPS)
        with torch.no_grad():
            sim = xn @ xn.transpose(1, 2)
            eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
            nn_idx = sim.masked_fill(eye, float("-inf")).argmax(dim=-1)  # (B, r)
        neighbours = torch.gather(xn, 1, nn_idx.unsqueeze(-1).expand_as(xn))
        dist = F.pairwise_distance(xn, neighbours, eps=EPS)
        return -torch.log(0.5 * dist + EPS).mean()
