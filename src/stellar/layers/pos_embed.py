"""Position encodings: resized learned ViT embeddings; the decoder's random Fourier features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resize_patch_pos_embed(pos_embed: Tensor, grid: tuple[int, int]) -> Tensor:
    """Patch position embeddings (1, g*g, D) of a square grid (no CLS entry) resized to
    ``grid`` = (h, w): (1, h*w, D). Bicubic, ``align_corners=False``, with the explicit output
    size (not a scale factor), as the official model does for other resolutions."""
    n, d = pos_embed.shape[1], pos_embed.shape[2]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"position embeddings hold {n} patches, not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    square = pos_embed.reshape(1, side, side, d).permute(0, 3, 1, 2)
    resized = F.interpolate(square.float(), size=grid, mode="bicubic", align_corners=False)
    return resized.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], d)


class FourierPositionEncoding(nn.Module):
    """Fixed random Fourier features of patch centres (the decoder's only position signal).

    A buffer ``G`` (2, F) ~ N(0, 1). For an h x w grid the centre of patch (i, j) is
    ``((j + 0.5) / w, (i + 0.5) / h)`` (x first), mapped to [-1, 1]; the encoding is
    ``[sin f0, cos f0, sin f1, cos f1, ...]`` of ``2π · coords @ G``, row-major over (i, j).
    """

    def __init__(self, num_features: int = 256) -> None:
        super().__init__()
        self.register_buffer("gaussian_matrix", torch.randn(2, num_features))

    def forward(self, grid: tuple[int, int]) -> Tensor:
        """Encoding of an (h, w) grid: (h*w, 2F), in the buffer's dtype."""
        h, w = grid
        g = self.gaussian_matrix
        ys = (torch.arange(h, device=g.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=g.device, dtype=torch.float32) + 0.5) / w
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
        proj = (2 * coords - 1) @ g.float() * (2 * math.pi)
        return torch.stack((proj.sin(), proj.cos()), dim=-1).flatten(1).to(g.dtype)
