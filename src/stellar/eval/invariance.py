"""Semantic invariance and the equivariance partition (arXiv 2602.01905): ``stellar eval
invariance``.

**Semantic invariance.** Each image (the evaluation view at resolution R) gets K random crops
(RandomResizedCrop(scale, ratio 3/4-4/3), resampled back to R x R). The cosine distance
``1 - cos`` between the representation of a crop and of the original is measured for ``cls``,
``dense_mean`` (mean patch token), ``sparse_matched`` (the concept-token sets under their best
one-to-one matching, Hungarian algorithm) and ``lowrank_mean`` (mean row of Z = L·S).
Reported: the mean over images of the mean over crops (lower = more invariant); a plain ViT
has only the first two. Features that barely depend on the input look trivially
invariant, so the same distance between each image and the one before it is reported beside.

**Equivariance partition.** For a spatial transform θ with a known patch correspondence (a
horizontal ``flip``; a ``shift`` by whole patches, the uncovered border replicating the last
column), both views are encoded into (L1, S1) and (L2, S2); L2's rows are aligned onto view
1's grid (patches present in both views only) and concept k is paired with concept k. With
ΔL = L2 - L1 and ΔS = S2 - S1 the change of Z = L·S splits exactly at the midpoint as

    ΔZ = ΔL·(S1 + S2)/2 + (L1 + L2)/2·ΔS,

the finite-difference form of ∂Z/∂θ = (∂L/∂θ)·S + L·(∂S/∂θ). The shares of the two Frobenius
norms (``l_share_mid``, ``s_share_mid``) are reported as means over images, with
``relative_change`` = ||ΔZ|| / ||Z1|| and ``s_cos_change``, the cosine distance of S2 to S1
token k against token k.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torch.utils.data import Dataset

from stellar.data.augment import random_resized_crop
from stellar.data.folder import EvalImages
from stellar.errors import UsageError, positive_int
from stellar.eval.common import (
    MODEL,
    add_common,
    check_folder,
    format_table,
    load_entries,
    metric,
)
from stellar.eval.encoder import Encoder, decodable_batches

DISTANCES: tuple[str, ...] = ("cls", "dense_mean", "sparse_matched", "lowrank_mean")


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos(a, b)`` along the last axis (float32), broadcasting the leading axes."""
    return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1)


def matched_set_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean cosine distance between (..., r, d) and (..., r', d) token sets under their optimal
    one-to-one matching: (...) float32 ``min_π mean_k (1 - cos(a_k, b_π(k)))`` over injective
    matchings of the smaller set into the larger one (Hungarian algorithm, exact)."""
    lead = a.shape[:-2]
    cost = 1.0 - F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).transpose(-1, -2)
    flat = cost.reshape(-1, *cost.shape[-2:]).detach().double().cpu().numpy()
    # scipy has no batched assignment solver; each r x r problem is microseconds, far below
    # the cost of the encoder pass that produced the tokens.
    values = np.array([c[linear_sum_assignment(c)].mean() for c in flat], dtype=np.float32)
    return torch.from_numpy(values).reshape(lead).to(a.device)


def representation_distances(
    original: dict[str, Tensor], crops: dict[str, Tensor], n_crops: int
) -> dict[str, Tensor]:
    """``{name: (B, K)}`` cosine distances (the :data:`DISTANCES` the outputs allow) between
    B images' encoder outputs and their B·K crops' (crop j of image i at row i·K + j)."""

    def pair(key: str) -> tuple[Tensor, Tensor]:
        o = original[key]
        c = crops[key].reshape(o.shape[0], n_crops, *crops[key].shape[1:])
        return o.unsqueeze(1), c

    o, c = pair("cls")
    out = {"cls": cosine_distance(o[..., 0, :], c[..., 0, :])}
    o, c = pair("dense")
    out["dense_mean"] = cosine_distance(o.mean(-2), c.mean(-2))
    if "sparse" in original:
        o, c = pair("sparse")
        out["sparse_matched"] = matched_set_distance(o.expand_as(c), c)
        o, c = pair("lowrank")
        out["lowrank_mean"] = cosine_distance(o.mean(-2), c.mean(-2))
    return out


def equivariance_partition(L1: Tensor, S1: Tensor, L2: Tensor, S2: Tensor) -> dict[str, Tensor]:
    """Split the change of Z = L·S between two aligned views into its L and S parts.

    Args:
        L1, L2: (B, n', r) localisation rows of the same n' patches (view 2 aligned to view 1).
        S1, S2: (B, r, d) concept tokens, token k of both views from query k.

    Returns:
        (B,) tensors, float64: ``l_share_mid`` and ``s_share_mid``, the shares of the two norms
        of the midpoint split (NaN where both vanish), and ``relative_change`` = ||ΔZ|| / ||Z1||.
    """
    L1, L2, S1, S2 = (t.double() for t in (L1, L2, S1, S2))
    norm = torch.linalg.matrix_norm
    mid_l, mid_s = norm((L2 - L1) @ (S1 + S2) / 2), norm((L1 + L2) / 2 @ (S2 - S1))
    total = mid_l + mid_s
    nan = torch.full_like(total, float("nan"))
    z1 = L1 @ S1
    return {
        "l_share_mid": torch.where(total > 0, mid_l / total, nan),
        "s_share_mid": torch.where(total > 0, mid_s / total, nan),
        "relative_change": norm(L2 @ S2 - z1) / norm(z1).clamp_min(1e-12),
    }


Align = Callable[[Tensor], Tensor]


def transform_views(
    name: str, images: Tensor, patch: int, shift: int = 1
) -> tuple[Tensor, Align, Align]:
    """``(view2, align1, align2)`` of a ``"flip"`` or a ``"shift"`` by ``shift`` patches of
    (B, 3, H, W) images, view 1: ``align_i`` maps (B, n, r) rows of view i's grid to the
    (B, n', r) rows of the patches both views show, in view 1's order."""
    b, _, h, w = images.shape
    gh, gw = h // patch, w // patch

    def grid(x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], gh, gw, x.shape[-1])

    if name == "flip":
        return (
            images.flip(-1),
            lambda x: x,
            lambda x: grid(x).flip(2).reshape(x.shape),
        )
    if not 1 <= shift < gw:
        raise UsageError(f"expected --shift of 1 to {gw - 1} patches (the grid width), got {shift}")
    px = shift * patch
    view = torch.cat([images[..., px:], images[..., -1:].expand(-1, -1, -1, px)], dim=-1)
    return (
        view,
        lambda x: grid(x)[:, :, shift:].reshape(x.shape[0], -1, x.shape[-1]),
        lambda x: grid(x)[:, :, : gw - shift].reshape(x.shape[0], -1, x.shape[-1]),
    )


def _encode(model: Encoder, images: Tensor, chunk: int) -> dict[str, Tensor]:
    parts = [model.forward_encode(x) for x in images.split(chunk)]
    return {k: torch.cat([p[k] for p in parts]).float() for k in parts[0]}


@torch.inference_mode()
def run_invariance(
    model: Encoder,
    dataset: Dataset,
    n_crops: int = 8,
    scale: Sequence[float] = (0.3, 1.0),
    shifts: Sequence[int] = (1,),
    batch_size: int = 32,
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Crop invariance of every representation and, for STELLAR, the equivariance partition
    under a flip and a shift by each of ``shifts`` patches, over a ``dataset`` of
    :class:`~stellar.data.folder.EvalImages` items, encoded in float32 (no autocast) so that
    small distances are not rounding noise.

    Returns:
        ``distances``: ``{name: {"mean", "std", "between"}}`` over images (``between``: each
        image against the one before it; None for a representation the model lacks);
        ``equivariance``: ``{"flip" | "shift <s>": {share: mean over the images where it is
        defined}}`` (empty without concept tokens); ``num_images``.
    """
    device = model.device
    factorised = "sparse" in model.feature_keys
    gen = torch.Generator(device=device).manual_seed(seed)
    transforms = {"flip": ("flip", 0)} | {f"shift {s}": ("shift", s) for s in shifts}
    transforms = transforms if factorised else {}
    dist_parts: dict[str, list[Tensor]] = {}
    between_parts: dict[str, list[Tensor]] = {}
    eq_parts: dict[str, dict[str, list[Tensor]]] = {t: {} for t in transforms}
    pin = device.type == "cuda"
    before: dict[str, Tensor] | None = None  # the outputs of the previous batch
    for batch in decodable_batches(dataset, batch_size, num_workers, pin, "invariance", progress):
        images = batch["image"].to(device)
        b, _, h, w = images.shape
        # K RandomResizedCrop views (ratio 3/4-4/3), not flipped, resampled back: (B, K, 3, R, R)
        size = torch.tensor([[h, w]]).expand(b, 2)
        crops = random_resized_crop(images, size, h, n_crops, scale, generator=gen, flip_p=0)
        original = _encode(model, images, batch_size)
        encoded = _encode(model, crops.flatten(0, 1), batch_size)
        for name, d in representation_distances(original, encoded, n_crops).items():
            dist_parts.setdefault(name, []).append(d.mean(1).cpu())
        chain = {
            k: v if before is None else torch.cat([before[k][-1:], v]) for k, v in original.items()
        }
        pairs = ({k: v[1:] for k, v in chain.items()}, {k: v[:-1] for k, v in chain.items()})
        for name, d in representation_distances(*pairs, 1).items():
            between_parts.setdefault(name, []).append(d[:, 0].cpu())
        before = original
        for t, (kind, s) in transforms.items():
            view, align1, align2 = transform_views(kind, images, model.patch_size, s)
            other = _encode(model, view, batch_size)
            shares = equivariance_partition(
                align1(original["spatial"]),
                original["sparse"],
                align2(other["spatial"]),
                other["sparse"],
            )
            shares["s_cos_change"] = cosine_distance(original["sparse"], other["sparse"]).mean(-1)
            for k, v in shares.items():
                eq_parts[t].setdefault(k, []).append(v.cpu())
    distances: dict[str, dict[str, float] | None] = {name: None for name in DISTANCES}
    for name, parts in dist_parts.items():
        values = torch.cat(parts).double()
        distances[name] = {
            "mean": values.mean().item(),
            "std": values.std(unbiased=False).item(),
            "between": torch.cat(between_parts[name]).double().mean().item(),
        }
    equivariance = {
        t: {k: torch.cat(v).nanmean().item() for k, v in parts.items()}
        for t, parts in eq_parts.items()
    }
    n = sum(p.shape[0] for p in dist_parts["cls"])
    return {"distances": distances, "equivariance": equivariance, "num_images": n}


# ------------------------------------------------------------------ stellar eval invariance
def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--data", required=True, help="image folder")
    p.add_argument("--crops", type=positive_int, default=8, help="random crops per image")
    p.add_argument(
        "--scale", type=float, nargs=2, default=(0.3, 1.0), metavar=("MIN", "MAX"), help="crop area"
    )
    p.add_argument(
        "--shift", type=positive_int, default=1, help="translation of 'shift', in patches"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One row per model: crop distances and (STELLAR) the equivariance partition."""
    data = check_folder(args.data, "--data").root
    lo, hi = args.scale
    if not 0 < lo <= hi <= 1:
        raise UsageError(f"--scale: expected 0 < MIN <= MAX <= 1, got {lo} {hi}")
    rows = []
    for e in load_entries(args):
        width = e.resolution // e.model.patch_size  # the grid, checked before any image is read
        if args.shift >= width:
            raise UsageError(f"expected --shift of 1 to {width - 1} patches, got {args.shift}")
        result = run_invariance(
            e.model, EvalImages(data, e.resolution), args.crops, (lo, hi), (args.shift,),
            args.batch_size, args.num_workers, args.seed, not args.no_progress,
        )  # fmt: skip
        rows.append(e.row(**result))
    return {"rows": rows}


def tables(result: dict[str, Any]) -> list[str]:
    """The distance table and, for STELLAR, the equivariance table."""
    rows, cell = result["rows"], metric(".4f")

    def crop_and_between(row: dict[str, Any], name: str) -> str:
        d = row["distances"].get(name) or {}
        return f"{cell(d.get('mean'))} / {cell(d.get('between'))}"

    cols = [MODEL] + [(n, lambda r, n=n: crop_and_between(r, n)) for n in DISTANCES]
    out = [
        "cosine distance of a crop to its original / of an image to another (invariant: the "
        "first far below the second)",
        format_table(cols, rows),
    ]
    eq_rows = [
        {"model": r["model"], "transform": t, **s}
        for r in rows
        for t, s in (r.get("equivariance") or {}).items()
    ]
    if eq_rows:
        share = ("l_share_mid", "s_share_mid", "relative_change", "s_cos_change")
        eq_cols = [MODEL, ("transform", lambda r: r["transform"])] + [
            (s, lambda r, s=s: metric(".4f")(r.get(s))) for s in share
        ]
        out += ["equivariance partition of dZ = dL.(S1 + S2)/2 + (L1 + L2)/2.dS"]
        out += [format_table(eq_cols, eq_rows)]
    return out
