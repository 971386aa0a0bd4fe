"""Weighted k-nearest-neighbour classification (the DINO protocol): ``stellar eval knn``."""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from stellar.errors import positive_float, positive_int
from stellar.eval.common import format_table
from stellar.eval.features import (
    ACCURACY_COLUMNS,
    add_classification_arguments,
    classification_setup,
    split_features,
)
from stellar.eval.linear import accuracy_topk

MAX_SIM_ELEMENTS = 1 << 26  # 64M similarities (256 MB in fp32) per block of test rows
# DINO's k and vote temperature T: the defaults of the functions and of the CLI
K = 20
TEMPERATURE = 0.07


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = K,
    temperature: float = TEMPERATURE,
) -> torch.Tensor:
    """Weighted kNN class probabilities (DINO) of (M, D) queries against an (N, D) bank with
    (N,) labels in ``[0, num_classes)``: the ``k`` (clamped to N) most cosine-similar bank rows
    vote with weight ``exp(cos / T)``. Returns (M, C) float32 on the bank's device, the votes
    normalised to sum to 1; the queries go chunk by chunk within :data:`MAX_SIM_ELEMENTS`."""
    n = train_features.shape[0]
    k = min(k, n)
    device = train_features.device
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(device=device, dtype=torch.long)
    m = test_features.shape[0]
    out = torch.zeros(m, num_classes, dtype=torch.float32, device=device)
    chunk = max(1, MAX_SIM_ELEMENTS // n)
    for start in range(0, m, chunk):
        queries = F.normalize(test_features[start : start + chunk].to(device).float(), dim=1)
        sims, idx = (queries @ bank.T).topk(k, dim=1)
        # Subtracting the row max before exp keeps exp(sim/T) finite for small T; the shift
        # cancels in the normalisation, so the scores equal DINO's up to a per-row factor.
        weights = ((sims - sims.max(dim=1, keepdim=True).values) / temperature).exp()
        out[start : start + chunk].scatter_add_(1, labels[idx], weights)
    return out / out.sum(dim=1, keepdim=True)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    **knn: Any,
) -> dict[str, float]:
    """``{"top1", "top5"}`` of :func:`knn_classify`'s votes for (M,) ``test_labels``."""
    probs = knn_classify(train_features, train_labels, test_features, num_classes, **knn)
    # A class no neighbour voted for is not a prediction, even when fewer than 5 classes got
    # votes and it fills a top-5 slot on a tie at zero (DINO's top-5 stops at min(5, k)).
    labels = test_labels.to(probs.device).long()
    voted = probs.gather(1, labels.unsqueeze(1)).squeeze(1) > 0
    return accuracy_topk(probs, torch.where(voted, labels, -1), (1, 5))


# ---------------------------------------------------------------------------- stellar eval knn
def add_arguments(p: argparse.ArgumentParser) -> None:
    add_classification_arguments(p)
    p.add_argument("--k", type=positive_int, default=K, help="neighbours that vote")
    p.add_argument(
        "--temperature", type=positive_float, default=TEMPERATURE, help="of the votes' weights"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One row per model: kNN top-1 / top-5 on --val with the --train bank."""
    entries, train_dir, val_dir = classification_setup(args)
    rows = []
    for e in entries:
        val = split_features(args, e, val_dir, args.val_features)
        train = split_features(args, e, train_dir, args.train_features)
        val_y, num = val.labels_in(train.classes), len(train.classes)
        knn = {"k": args.k, "temperature": args.temperature}
        metrics = knn_accuracy(train.x, train.y, val.x, val_y, num, **knn)
        k = min(args.k, len(train))  # what knn_classify uses
        rows.append(e.row(**metrics, k=k, num_train=len(train), num_val=len(val)))
    return {"rows": rows, "augmented": False}


def tables(result: dict[str, Any]) -> list[str]:
    cols = [*ACCURACY_COLUMNS, ("k", lambda r: str(r["k"]))]
    return [format_table(cols, result["rows"])]
