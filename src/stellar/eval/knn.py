"""Weighted k-nearest-neighbour classification (the DINO protocol): ``stellar eval knn``.

Features are L2-normalised, similarity is the cosine, the ``k`` nearest training samples vote
for their class with weight ``exp(sim / T)``. The test set is processed in chunks so that the
``chunk × N`` similarity block never exceeds a memory budget, and the bank itself can be tiled
too (top-k merged across tiles), so a 1.28M × D ImageNet bank never materialises ``M × N``.

Decisions:
- ``k > N`` is clamped to ``N`` (with a warning) instead of raising, so tiny debug banks work.
- Class scores are returned normalised to sum to one per test sample (the argmax and the top-k
  order are those of DINO's raw weighted votes).
- Accuracies are fractions in [0, 1]; ``top5`` uses ``min(5, num_classes)``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
import torch.nn.functional as F

from stellar.errors import positive_float, positive_int
from stellar.eval.common import format_table
from stellar.eval.features import (
    ACCURACY_COLUMNS,
    LabelledFeatures,
    add_classification_arguments,
    align_val,
    classification_setup,
    split_features,
)
from stellar.eval.linear import accuracy_topk

logger = logging.getLogger(__name__)

_DEFAULT_MAX_SIM_ELEMENTS = 1 << 26  # 64M similarities (256 MB in fp32) per block
# DINO's k and vote temperature T: the defaults of the functions and of the CLI
K = 20
TEMPERATURE = 0.07


def _check_inputs(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
) -> None:
    if train_features.dim() != 2 or test_features.dim() != 2:
        raise ValueError(
            "expected train_features (N, D) and test_features (M, D), got "
            f"{tuple(train_features.shape)} and {tuple(test_features.shape)}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"expected equal feature dims, got {train_features.shape[1]} (train) and "
            f"{test_features.shape[1]} (test)"
        )
    if train_labels.dim() != 1 or train_labels.shape[0] != train_features.shape[0]:
        raise ValueError(
            f"expected train_labels of shape ({train_features.shape[0]},), "
            f"got {tuple(train_labels.shape)}"
        )
    if train_features.shape[0] == 0:
        raise ValueError("expected a non-empty training bank, got N = 0")
    if num_classes < 1:
        raise ValueError(f"expected num_classes >= 1, got {num_classes}")
    if k < 1:
        raise ValueError(f"expected k >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"expected temperature > 0, got {temperature}")
    if train_labels.is_floating_point():
        raise ValueError(f"expected integer train_labels, got dtype {train_labels.dtype}")
    if train_labels.numel() and (
        int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes
    ):
        raise ValueError(
            f"expected train_labels in [0, {num_classes}), got range "
            f"[{int(train_labels.min())}, {int(train_labels.max())}]"
        )


def _faiss_topk(
    bank: torch.Tensor, queries: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Exact inner-product top-k with faiss on CPU, or None when faiss is not installed."""
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        logger.info("faiss is not installed; using the torch top-k search")
        return None
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank.detach().float().cpu().contiguous().numpy())
    sims, idx = index.search(queries.detach().float().cpu().contiguous().numpy(), k)
    return torch.from_numpy(sims), torch.from_numpy(idx).long()


def _torch_topk(
    bank: torch.Tensor, queries: torch.Tensor, k: int, bank_chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine similarities of ``queries`` (c, D) against ``bank`` (N, D).

    With ``bank_chunk_size`` the bank is tiled and the running top-k is merged tile by tile, so
    only ``c × bank_chunk_size`` similarities exist at once.
    """
    n = bank.shape[0]
    if bank_chunk_size is None or bank_chunk_size >= n:
        return (queries @ bank.T).topk(k, dim=1)
    best_sim: torch.Tensor | None = None
    best_idx: torch.Tensor | None = None
    for start in range(0, n, bank_chunk_size):
        tile = bank[start : start + bank_chunk_size]
        sim, idx = (queries @ tile.T).topk(min(k, tile.shape[0]), dim=1)
        idx = idx + start
        if best_sim is None:
            best_sim, best_idx = sim, idx
        else:
            merged_sim = torch.cat([best_sim, sim], dim=1)
            merged_idx = torch.cat([best_idx, idx], dim=1)
            best_sim, pos = merged_sim.topk(min(k, merged_sim.shape[1]), dim=1)
            best_idx = merged_idx.gather(1, pos)
    assert best_sim is not None and best_idx is not None
    return best_sim, best_idx


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = K,
    temperature: float = TEMPERATURE,
    chunk_size: int | None = None,
    bank_chunk_size: int | None = None,
    max_sim_elements: int = _DEFAULT_MAX_SIM_ELEMENTS,
    use_faiss: bool = False,
) -> torch.Tensor:
    """Weighted kNN class probabilities (DINO).

    Args:
        train_features: (N, D) bank features (any float dtype; normalised here).
        train_labels: (N,) integer labels in ``[0, num_classes)``.
        test_features: (M, D) query features; moved chunk by chunk to the bank's device.
        num_classes: number of classes C.
        k: neighbours; clamped to N with a warning when larger.
        temperature: T in the vote weight ``exp(cos / T)``.
        chunk_size: test rows per chunk; by default chosen so that ``chunk × N`` (or
            ``chunk × bank_chunk_size``) stays within ``max_sim_elements``.
        bank_chunk_size: optional bank tile size; top-k is merged across tiles.
        max_sim_elements: similarity-block budget used to pick ``chunk_size``.
        use_faiss: use faiss (exact inner-product index, CPU) for the top-k search when it is
            installed; falls back to torch otherwise.

    Returns:
        (M, C) class probabilities (weighted votes normalised to sum to 1), float32, on the
        bank's device.
    """
    _check_inputs(train_features, train_labels, test_features, num_classes, k, temperature)
    n = train_features.shape[0]
    if k > n:
        logger.warning("k = %d exceeds the bank size %d; using k = %d", k, n, n)
        k = n
    device = train_features.device
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(device=device, dtype=torch.long)
    m = test_features.shape[0]
    out = torch.empty(m, num_classes, dtype=torch.float32, device=device)
    if m == 0:
        return out

    if use_faiss:
        found = _faiss_topk(bank, F.normalize(test_features.float(), dim=1), k)
        if found is not None:
            sims, idx = found[0].to(device), found[1].to(device)
            return _vote(sims, labels[idx], num_classes, temperature)

    if chunk_size is None:
        cols = n if bank_chunk_size is None else min(n, bank_chunk_size)
        chunk_size = max(1, max_sim_elements // cols)
    if chunk_size < 1:
        raise ValueError(f"expected chunk_size >= 1, got {chunk_size}")
    for start in range(0, m, chunk_size):
        queries = F.normalize(test_features[start : start + chunk_size].to(device).float(), dim=1)
        sims, idx = _torch_topk(bank, queries, k, bank_chunk_size)
        out[start : start + chunk_size] = _vote(sims, labels[idx], num_classes, temperature)
    return out


def _vote(
    sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """(c, k) similarities and labels -> (c, C) normalised weighted votes."""
    # Subtracting the row max before exp keeps exp(sim/T) finite for small T; the shift
    # cancels in the normalisation, so the scores equal DINO's up to a per-row factor.
    logits = (sims - sims.max(dim=1, keepdim=True).values) / temperature
    weights = logits.exp()
    scores = torch.zeros(sims.shape[0], num_classes, dtype=torch.float32, device=sims.device)
    scores.scatter_add_(1, neighbour_labels, weights.float())
    return scores / scores.sum(dim=1, keepdim=True)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    **knn: Any,
) -> dict[str, float]:
    """kNN top-1 / top-5 accuracy (fractions in [0, 1]) of :func:`knn_classify`'s votes.

    Args:
        train_features: (N, D); train_labels: (N,); test_features: (M, D);
        test_labels: (M,); num_classes: C.
        knn: the options of :func:`knn_classify` (``k``, ``temperature``, ...).

    Returns:
        ``{"top1": float, "top5": float}``.
    """
    if test_labels.dim() != 1 or test_labels.shape[0] != test_features.shape[0]:
        raise ValueError(
            f"expected test_labels of shape ({test_features.shape[0]},), "
            f"got {tuple(test_labels.shape)}"
        )
    probs = knn_classify(train_features, train_labels, test_features, num_classes, **knn)
    # A class no neighbour voted for is not a prediction, even when fewer than 5 classes got
    # votes and it fills a top-5 slot on a tie at zero (DINO's top-5 stops at min(5, k)).
    labels = test_labels.to(probs.device).long()
    voted = probs.gather(1, labels.unsqueeze(1)).squeeze(1) > 0
    return accuracy_topk(probs, torch.where(voted, labels, -1), (1, 5))


def run_knn(train: LabelledFeatures, val: LabelledFeatures, **knn: Any) -> dict[str, float]:
    """Weighted kNN (DINO) on pooled features: ``{"top1", "top5"}`` in [0, 1].

    ``knn``: the options of :func:`knn_classify` (``k``, ``temperature``, ...).
    """
    val_y, num = align_val(train, val)
    return knn_accuracy(train.x, train.y, val.x, val_y, num, **knn)


# ---------------------------------------------------------------------------- stellar eval knn
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``stellar eval knn``."""
    add_classification_arguments(p)
    p.add_argument("--k", type=positive_int, default=K)
    p.add_argument("--temperature", type=positive_float, default=TEMPERATURE)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One row per model: kNN top-1 / top-5 on --val with the --train bank."""
    entries, train_dir, val_dir = classification_setup(args)
    rows = []
    for e in entries:
        val = split_features(args, e, val_dir, args.val_features)
        train = split_features(args, e, train_dir, args.train_features)
        metrics = run_knn(train, val, k=args.k, temperature=args.temperature)
        rows.append(e.row(**metrics, k=args.k, num_train=len(train), num_val=len(val)))
    return {"rows": rows, "augmented": False}


def tables(result: dict[str, Any]) -> list[str]:
    """The printed result."""
    cols = [*ACCURACY_COLUMNS, ("k", lambda r: str(r["k"]))]
    return [format_table(cols, result["rows"])]
