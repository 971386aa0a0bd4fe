"""The explorer's logic without a UI: open and encode one image, draw its maps, click -> token,
and the two edits of the factorization Z = L·S.

Shapes: one image's localisation ``spatial`` L is (n, r), rows on the simplex, n = h·w patches
in row-major order; its concept tokens ``sparse`` S are (r, d); Z = L·S is (n, d).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from stellar.viz.maps import concept_overlay, concept_views, heatmap, palette

DROP_TEXT = (
    "**Drop token {k}**: column {k} of L is set to 0 and each patch's row of L is divided by "
    "its new sum, so the other concepts share that patch's weight; S is unchanged. A patch "
    "whose whole weight was on token {k} keeps an all-zero row (no concept describes it; its "
    "Z row is 0)."
)
SWAP_TEXT = (
    "**Swap token {k}**: row {k} of S (what token {k} is) is replaced by token {j} of {name}; "
    "L (where each concept is) is unchanged, so the new concept is decoded where token {k} was."
)


@dataclass
class Encoded:
    """One image as the model sees it.

    Attributes:
        name: what to call the image in the page.
        image: (3, S, S) in [0, 1], the model's input.
        sparse: (r, d) concept tokens S.
        spatial: (n, r) localisation L.
        dense: (n, d) patch tokens.
        grid: the patch grid (h, w).
    """

    name: str
    image: Tensor
    sparse: Tensor
    spatial: Tensor
    dense: Tensor
    grid: tuple[int, int]

    @property
    def lowrank(self) -> Tensor:
        """Z = L·S, (n, d)."""
        return self.spatial @ self.sparse


@torch.inference_mode()
def encode_image(model, image: Image.Image, name: str = "image") -> Encoded:
    """Preprocess (the release's resize and centre crop) and encode one image on the model's
    device; float32 CPU tensors."""
    batch = model.preprocess(image)
    out = model.encode(batch)
    first = {k: out[k][0].float().cpu() for k in ("sparse", "spatial", "dense")}
    return Encoded(name, batch[0].float().cpu(), grid=model.grid(batch), **first)


def token_at(spatial: Tensor, grid: tuple[int, int], xy: tuple[float, float], size: int) -> int:
    """``argmax_k L[patch, k]`` of the patch under pixel ``xy`` = (x, y), x to the right, y
    down, of a ``size``-pixel square view; ``spatial`` L is (n, r), ``grid`` (h, w)."""
    h, w = grid
    row = min(max(int(xy[1] * h // size), 0), h - 1)
    col = min(max(int(xy[0] * w // size), 0), w - 1)
    return int(spatial[row * w + col].argmax())


def drop_token(spatial: Tensor, token: int) -> Tensor:
    """L (n, r) without concept ``token``: its column zeroed, each affected row renormalised to
    sum 1. Rows where ``token`` had no weight are returned bit for bit, so Z = L·S changes
    exactly at the patches where it had weight. A row whose whole weight was on ``token`` stays
    all zero."""
    out = spatial.clone()
    hit = spatial[:, token] > 0
    rows = out[hit]
    rows[:, token] = 0
    total = rows.sum(-1, keepdim=True)
    out[hit] = torch.where(total > 0, rows / total.clamp_min(torch.finfo(rows.dtype).tiny), rows)
    return out


def swap_token(sparse: Tensor, token: int, vector: Tensor) -> Tensor:
    """S (r, d) with row ``token`` replaced by ``vector`` (d,), a concept token of another
    image."""
    out = sparse.clone()
    out[token] = vector.to(out.dtype)
    return out


def legend_html(peaks: Tensor, share: Tensor, selected: int | None) -> str:
    """The colour legend of ``stellar viz`` as HTML: one swatch per token with its peak value
    ``max_i L[i, k]`` and the share of patches it wins (``peaks``, ``share``: (r,))."""
    colours = palette(len(peaks))
    items = []
    for k, (peak, won) in enumerate(zip(peaks.tolist(), share.tolist(), strict=True)):
        r, g, b = colours[k].tolist()
        weight = "bold" if k == selected else "normal"
        items.append(
            f'<span style="display:inline-block;margin:2px 8px 2px 0;font-weight:{weight}">'
            f'<span style="display:inline-block;width:12px;'
            f"height:12px;background:rgb({r},{g},{b});border:1px solid #000;"
            f'vertical-align:middle"></span> t{k} peak {peak:.2f}, wins {won:.0%}</span>'
        )
    return f'<div id="legend">{"".join(items)}</div>'


def render_views(
    enc: Encoded,
    shown: list[int] | None = None,
    selected: int | None = None,
    cell: int = 384,
) -> dict[str, Image.Image | str]:
    """Every picture of one image: those of :func:`~stellar.viz.maps.concept_views`, the
    ``concepts`` showing the regions of ``shown`` (default all) with ``selected`` emphasised,
    and ``legend`` (HTML)."""
    spatial, grid = enc.spatial, enc.grid
    r = spatial.shape[1]
    shown = list(range(r)) if shown is None else [k for k in shown if k != selected]
    views = concept_views(
        enc.image, spatial, enc.dense, enc.lowrank, grid, cell, tokens=shown, alpha=0.3
    )
    if selected is not None:
        views["concepts"] = concept_overlay(
            views["concepts"], spatial, grid, tokens=[selected], alpha=0.65
        )
    share = torch.bincount(spatial.argmax(1), minlength=r).float() / spatial.shape[0]
    return views | {"legend": legend_html(spatial.amax(0), share, selected)}


def change_map(before: Tensor, after: Tensor, grid: tuple[int, int], cell: int) -> Image.Image:
    """‖ΔZ_i‖ per patch as a heat map (scaled to its maximum; black where Z is unchanged)."""
    delta = (after - before).norm(dim=-1).reshape(grid)
    scaled = delta / delta.max().clamp_min(1e-12)
    picture = Image.fromarray(heatmap(scaled.numpy()))
    return picture.resize((cell, cell), Image.Resampling.NEAREST)
