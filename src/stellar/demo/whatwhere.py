"""The paper's two "what vs where" experiments on validation scenes (docs/CONCEPTS.md).

Equivariance partition: the change of Z = L·S under a flip or whole-patch shifts, split into
(ΔL)·S̄ + L̄·(ΔS). Crop invariance: crop-vs-scene cosine distances, divided by the distance
between different scenes (a ratio well below 1 is invariant).
"""

from __future__ import annotations

import torch
from torch import Tensor

from stellar.data.scenes import ConceptScenes
from stellar.eval.invariance import (
    cosine_distance,
    equivariance_partition,
    matched_set_distance,
    random_crops,
    transform_views,
)
from stellar.models.stellar import STELLAR

TRANSFORMS: tuple[tuple[str, str, int], ...] = (
    ("flip", "flip", 1),
    ("shift 1 patch", "shift", 1),
    ("shift 2 patches", "shift", 2),
)
"""(label, transform name, shift in patches) of every transform the partition is measured on."""

INVARIANCE_KEYS: tuple[str, ...] = ("sparse", "dense", "lowrank")


def _images(val: ConceptScenes, n: int) -> Tensor:
    return torch.stack([val[i]["image"] for i in range(min(n, len(val)))])


@torch.no_grad()
def equivariance_scores(model: STELLAR, val: ConceptScenes, n: int = 100) -> dict[str, dict]:
    """Per transform: ``l_share`` (share of ΔZ carried by L), ``s_cos_change`` and
    ``relative_change`` (||ΔZ|| / ||Z||), means over the first ``n`` validation scenes."""
    model.eval()
    images = _images(val, n)
    first = model.forward_encode(images)
    scores = {}
    for label, name, shift in TRANSFORMS:
        view, align1, align2 = transform_views(name, images, model.patch_size, shift)
        second = model.forward_encode(view)
        parts = equivariance_partition(
            align1(first["spatial"]), first["sparse"], align2(second["spatial"]), second["sparse"]
        )
        l_share = parts["l_share_mid"]
        scores[label] = {
            "l_share": float(l_share[~l_share.isnan()].mean()),
            "s_cos_change": float(cosine_distance(first["sparse"], second["sparse"]).mean()),
            "relative_change": float(parts["relative_change"].mean()),
        }
    return scores


def _distances(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
    """(N,) cosine distance per representation between paired outputs ``a`` and ``b``."""
    return {
        "sparse": matched_set_distance(a["sparse"], b["sparse"]),
        "dense": cosine_distance(a["dense"].mean(1), b["dense"].mean(1)),
        "lowrank": cosine_distance(a["lowrank"].mean(1), b["lowrank"].mean(1)),
    }


@torch.no_grad()
def crop_invariance(
    model: STELLAR, val: ConceptScenes, seed: int, n: int = 100, k: int = 4
) -> dict[str, dict[str, float]]:
    """Per representation: ``crop`` (mean crop-vs-scene distance), ``between`` (scene vs the
    next scene) and ``ratio`` = crop / between, over ``k`` crops of the first ``n`` scenes."""
    model.eval()
    images = _images(val, n)
    g = torch.Generator().manual_seed(seed)
    crops = random_crops(images, k, scale=(0.3, 1.0), generator=g).flatten(0, 1)
    full = model.forward_encode(images)
    cropped = model.forward_encode(crops)
    repeated = {key: full[key].repeat_interleave(k, dim=0) for key in INVARIANCE_KEYS}
    crop = _distances(repeated, cropped)
    other = _distances(full, {key: full[key].roll(1, dims=0) for key in INVARIANCE_KEYS})
    out = {}
    for key in INVARIANCE_KEYS:
        c, b = float(crop[key].mean()), float(other[key].mean())
        out[key] = {"crop": c, "between": b, "ratio": c / b if b > 0 else float("nan")}
    return out
