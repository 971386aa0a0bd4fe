"""Linear probe (arXiv 2602.01905): ``stellar eval linear``.

Probe = LayerNorm(d) -> Linear(d, classes), trained either on features extracted once
(:func:`train_linear_probe`) or, with ``--augmented``, on fresh RandomResizedCrop + flip views
of each training image encoded every epoch (:func:`train_linear_augmented`, the paper's
recipe). Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from stellar.data.augment import random_resized_crop
from stellar.data.folder import ImageFolder
from stellar.data.loader import build_loader
from stellar.eval.common import format_table
from stellar.eval.encoder import Encoder, pool_features
from stellar.eval.features import (
    ACCURACY_COLUMNS,
    EVAL_RESIZE_RATIO,
    LabelledFeatures,
    add_classification_arguments,
    classification_setup,
    split_features,
)
from stellar.eval.probe import ProbeSchedule, fit_probe, predict, seeded, train_probe
from stellar.runtime import autocast

logger = logging.getLogger(__name__)


def linear_probe(dim: int, num_classes: int) -> nn.Sequential:
    """LayerNorm(dim) -> Linear(dim, num_classes): (N, dim) features -> (N, C) logits."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))


def accuracy_topk(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """``{"top{k}": fraction}`` of the (N,) ``labels`` among the k highest of the (N, C)
    ``logits``, for each k (clamped to C: ``top5`` is 1.0 when C <= 5)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == labels.to(top.device).long().unsqueeze(1)
    return {f"top{k}": hit[:, : min(k, kmax)].any(dim=1).float().mean().item() for k in ks}


# The paper's linear-probe recipe (the defaults of the functions and of the CLI).
SCHEDULE = ProbeSchedule(epochs=30, lr=1e-3, weight_decay=1e-4, batch_size=256)


def train_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    schedule: ProbeSchedule = SCHEDULE,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[nn.Sequential, dict[str, float]]:
    """Train a :func:`linear_probe` on cached (N, D) or (N, T, D) features (tokens
    mean-pooled; they may stay on the CPU) with (N,) labels, and score it on (M, ...) ``val_x``
    with (M,) ``val_y``: ``(probe, {"top1", "top5"})``.

    Deterministic for a given seed and device: ``schedule.seed`` seeds the probe initialisation
    and the batch order, the global RNG is left untouched.
    """
    train_x = pool_features(train_x)
    build = partial(linear_probe, train_x.shape[1], num_classes)
    probe = train_probe(
        build, train_x, train_y, F.cross_entropy, schedule, device, "linear probe", progress
    )
    metrics = accuracy_topk(predict(probe, pool_features(val_x), 1024, device), val_y)
    logger.info("linear probe: top1 %.4f top5 %.4f", metrics["top1"], metrics["top5"])
    return probe, metrics


AUG_SCALE: tuple[float, float] = (0.2, 1.0)


def train_linear_augmented(
    model: Encoder,
    key: str,
    train_root: str | Path,
    val: LabelledFeatures,
    resolution: int,
    schedule: ProbeSchedule = SCHEDULE,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """The paper's augmented linear probe on the class folders of ``train_root``: fresh views
    every epoch, encoded by the frozen model and pooled, the probe scored on ``val`` (pooled
    features of the evaluation view): ``{"top1", "top5"}``. The schedule's seed also fixes the
    crops."""
    device = model.device
    folder = ImageFolder(train_root, canvas_size=round(resolution * EVAL_RESIZE_RATIO))
    classes = folder.require_labels(str(train_root))
    val_y = val.labels_in(classes)
    loader = build_loader(
        folder, schedule.batch_size, num_workers, shuffle=True, seed=schedule.seed, drop_last=False,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    probe = seeded(partial(linear_probe, val.x.shape[1], len(classes)), schedule.seed, device)
    gen = torch.Generator(device=device).manual_seed(schedule.seed)

    def epoch_batches(epoch: int):
        loader.sampler.set_position(epoch, 0)
        return loader

    def loss_of(batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        canvas = batch["canvas"].to(device, non_blocking=True)
        views = random_resized_crop(
            canvas, batch["size"].to(device), resolution, 1, scale=AUG_SCALE, generator=gen
        )[:, 0]
        with torch.no_grad(), autocast(device):
            feats = pool_features(model.forward_encode(views)[key]).float()
        target = batch["label"].to(device)
        return F.cross_entropy(probe(feats), target), target.numel()

    fit_probe(probe, schedule, epoch_batches, loss_of, device, "linear probe (augmented)", progress)
    return accuracy_topk(predict(probe, val.x, 1024, device), val_y)


# ---------------------------------------------------------------------------- stellar eval linear
def add_arguments(p: argparse.ArgumentParser) -> None:
    add_classification_arguments(p)
    SCHEDULE.add_arguments(p, "--probe-batch-size")
    p.add_argument(
        "--augmented",
        action="store_true",
        help="RandomResizedCrop(0.2-1) + flip views encoded every epoch (the paper's recipe)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One row per model: top-1 / top-5 on --val."""
    entries, train_dir, val_dir = classification_setup(args, augmented=args.augmented)
    schedule = ProbeSchedule.from_args(args, args.probe_batch_size)
    progress = not args.no_progress
    rows = []
    for e in entries:
        val = split_features(args, e, val_dir, args.val_features)
        if args.augmented:
            metrics = train_linear_augmented(
                e.model, e.key, train_dir, val, e.resolution, schedule, args.num_workers, progress
            )
            num_train = len(ImageFolder(train_dir))
        else:
            train = split_features(args, e, train_dir, args.train_features)
            _, metrics = train_linear_probe(
                train.x, train.y, val.x, val.labels_in(train.classes), len(train.classes),
                schedule, e.model.device, progress,
            )  # fmt: skip
            num_train = len(train)
        rows.append(e.row(**metrics, num_train=num_train, num_val=len(val)))
    return {"rows": rows, "augmented": args.augmented}


def tables(result: dict[str, Any]) -> list[str]:
    return [format_table(ACCURACY_COLUMNS, result["rows"])]
