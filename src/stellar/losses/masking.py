"""Random patch masking of the masked views, with optional focal concentration."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["add_masks", "num_kept", "random_masking"]

FocalMode = Literal["gaussian", "block"]  # the config takes these names (or null)
# The Gaussian focus's sigma, uniform in this range (a fraction of the grid side).
SIGMA_RANGE = (0.1, 0.5)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Number of patches a view keeps: ``floor(num_patches * (1 - mask_ratio))``, at least 1
    (a ValueError otherwise). A 1e-6 tolerance keeps float round-off from dropping a patch
    (10 * (1 - 0.9) = 0.99999...)."""
    n_keep = int(math.floor(num_patches * (1.0 - mask_ratio) + 1e-6))
    if n_keep < 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} keeps no patch of {num_patches}; expected a lower ratio"
        )
    return n_keep


def _block_shape(n_keep: int, grid_h: int, grid_w: int) -> tuple[int, int]:
    """Smallest near-square (bh, bw) block holding n_keep patches inside the grid."""
    bw = min(math.ceil(math.sqrt(n_keep)), grid_w)
    bh = math.ceil(n_keep / bw)
    if bh > grid_h:
        bh = grid_h
        bw = math.ceil(n_keep / grid_h)
    return bh, bw


def random_masking(
    batch_size: int,
    grid_h: int,
    grid_w: int,
    mask_ratio: float = 0.8,
    focal_mode: FocalMode | None = "gaussian",
    focal_prob: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Choose the patches each masked view keeps; one row per view, all rows at once.

    Patches are ranked by uniform noise and the ``n_keep = num_kept(grid_h * grid_w,
    mask_ratio)`` lowest are kept. Each row independently becomes *focal* with probability
    ``focal_prob``:

    - ``"gaussian"``: the row's noise is lowered by ``exp(-||c - c0||^2 / (2 sigma^2))``, with
      patch centres ``c = ((i + 0.5) / grid_h, (j + 0.5) / grid_w)`` in unit coordinates, a
      centre ``c0`` uniform in the unit square and ``sigma`` uniform in ``SIGMA_RANGE``
      (a fraction of the grid side), so the kept patches cluster around ``c0``.
    - ``"block"``: the row keeps a block at a uniformly random position. When ``n_keep = s^2``
      (and s fits the grid) the block is the s x s square; otherwise it is the smallest
      near-square ``bh x bw`` block with ``bw = ceil(sqrt(n_keep))`` and
      ``bh = ceil(n_keep / bw)`` (clipped to the grid), of which the first ``n_keep``
      patches in raster order are kept (a rectangle plus one partial row, still contiguous).
    - ``None``: no focal rows (plain uniform random masking).

    Random draws, in order, from ``generator`` (on ``device``): noise (B, n), focal coin (B,),
    then centre (B, 2) and sigma (B,) for gaussian or top-left corner (B, 2) for block.

    Returns:
        (batch_size, n_keep) int64 raster indices of kept patches, ascending in each row.
    """
    lo, hi = SIGMA_RANGE
    n = grid_h * grid_w
    n_keep = num_kept(n, mask_ratio)
    if device is None and generator is not None:
        device = generator.device
    kw = {"generator": generator, "device": device}

    noise = torch.rand(batch_size, n, **kw)
    if focal_mode is not None:
        focal = torch.rand(batch_size, **kw) < focal_prob  # (B,)
        rows = torch.arange(grid_h, device=noise.device).repeat_interleave(grid_w)  # (n,)
        cols = torch.arange(grid_w, device=noise.device).repeat(grid_h)
        if focal_mode == "gaussian":
            centre = torch.rand(batch_size, 2, **kw)
            sigma = lo + (hi - lo) * torch.rand(batch_size, **kw)
            dy = (rows + 0.5) / grid_h - centre[:, :1]  # (B, n)
            dx = (cols + 0.5) / grid_w - centre[:, 1:]
            bump = torch.exp(-(dy.square() + dx.square()) / (2.0 * sigma[:, None].square()))
            noise = torch.where(focal[:, None], noise - bump, noise)
        else:
            bh, bw = _block_shape(n_keep, grid_h, grid_w)
            corner = torch.rand(batch_size, 2, **kw)
            top = (corner[:, :1] * (grid_h - bh + 1)).long()  # (B, 1), in [0, grid_h - bh]
            left = (corner[:, 1:] * (grid_w - bw + 1)).long()
            ri, ci = rows - top, cols - left  # (B, n) block-relative coordinates
            inside = (ri >= 0) & (ri < bh) & (ci >= 0) & (ci < bw)
            # Block patches rank by block raster order, all below the [0, 1) noise range.
            block_rank = (ri * bw + ci).to(noise.dtype) - n
            noise = torch.where(focal[:, None] & inside, block_rank, noise)
    keep = noise.argsort(dim=1)[:, :n_keep]
    return keep.sort(dim=1).values


def add_masks(
    batch: dict[str, Tensor],
    patch_size: int,
    generator: torch.Generator | None = None,
    **masking: Any,
) -> dict[str, Tensor]:
    """``batch`` with ``keep_idx`` (B·V, k), the patches each of its ``masked_views`` keeps
    (:func:`~stellar.losses.masking.random_masking` with the ``masking`` settings)."""
    if "masked_views" in batch:
        views = batch["masked_views"]
        h, w = views.shape[-2] // patch_size, views.shape[-1] // patch_size
        batch["keep_idx"] = random_masking(
            views.shape[0], h, w, **masking, generator=generator, device=views.device
        )
    return batch
