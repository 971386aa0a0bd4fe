"""Linear segmentation probe and dataset-level mIoU (arXiv 2602.01905): ``stellar eval seg``.

Probe = BatchNorm2d(d) -> 1x1 Conv2d(d, classes) on the frozen ``dense`` grid, logits
upsampled bilinearly to the label size, cross-entropy with ignore label 255. Images are
stretched to the evaluation resolution squared (nothing is cut off) and their label maps resized
to the same square with nearest sampling, so the metric is measured at that resolution.

mIoU comes from one confusion matrix accumulated over the whole dataset (never an average of
per-image or per-batch mIoUs).
"""

from __future__ import annotations

import argparse
import logging
import math
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from stellar.data.folder import EvalImages
from stellar.errors import UsageError, positive_int
from stellar.eval.common import (
    KEY,
    MODEL,
    add_common,
    add_keys,
    format_table,
    load_entries,
    percent,
)
from stellar.eval.encoder import extract_features
from stellar.eval.probe import ProbeSchedule, predict, train_probe
from stellar.eval.segdata import IGNORE, find_split, load_label_maps

logger = logging.getLogger(__name__)


class SegmentationProbe(nn.Module):
    """BatchNorm2d(dim) followed by a 1x1 convolution to ``num_classes``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, dense: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, n, D) patch tokens of a square grid, n = h², -> (B, C, H, W) logits upsampled
        bilinearly (``align_corners=False``) to ``out_size`` (None: (h, h))."""
        b, n, d = dense.shape
        side = math.isqrt(n)
        # CPU batch norm is ~30x slower on the channels-last strides a permute leaves behind
        x = dense.float().reshape(b, side, side, d).permute(0, 3, 1, 2).contiguous()
        logits = self.conv(self.bn(x))
        if out_size is None:
            return logits
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 pixel counts, rows = target, columns = prediction, of label maps of one
    shape in ``[0, C)``; pixels whose target is ``IGNORE`` are skipped."""
    c = num_classes
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().to(target.device)
    valid = target != IGNORE
    counts = torch.bincount(target[valid] * c + pred[valid], minlength=c * c)
    return counts.reshape(c, c).cpu()


def segmentation_scores(matrix: torch.Tensor) -> dict:
    """``{"miou", "pixel_acc", "iou_per_class": (C,) float64}`` of a confusion matrix; the IoU
    of a class absent from both prediction and target is NaN and left out of ``miou`` (one
    predicted but absent from the targets has IoU 0 and counts)."""
    m = matrix.double()
    inter = m.diagonal()
    union = m.sum(dim=0) + m.sum(dim=1) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, math.nan))
    total = m.sum()
    present = ~iou.isnan()
    miou = iou[present].mean().item() if bool(present.any()) else math.nan
    pixel_acc = (inter.sum() / total).item() if total > 0 else math.nan
    return {"miou": miou, "pixel_acc": pixel_acc, "iou_per_class": iou}


# The paper's segmentation-probe recipe (the defaults of the functions and of the CLI).
SCHEDULE = ProbeSchedule(epochs=20, lr=1e-3, weight_decay=1e-4, batch_size=16)


def train_segmentation_probe(
    train_dense: torch.Tensor,
    train_masks: torch.Tensor,
    val_dense: torch.Tensor | None,
    val_masks: torch.Tensor | None,
    num_classes: int,
    schedule: ProbeSchedule = SCHEDULE,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[SegmentationProbe, dict]:
    """Train a :class:`SegmentationProbe` on cached (N, n, D) patch tokens of square grids
    (they may stay on the CPU) and (N, H, W) integer label maps (``IGNORE`` for unlabelled
    pixels): ``(probe, segmentation_scores of the validation pair)`` ({} without one),
    deterministic for a given ``schedule.seed`` and device."""

    def loss(grid_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        size = target.shape[-2:]
        logits = F.interpolate(grid_logits, size=size, mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, target, ignore_index=IGNORE)

    # a batch whose pixels are all ignored has a NaN mean loss: it is skipped
    probe = train_probe(
        partial(SegmentationProbe, train_dense.shape[-1], num_classes),
        train_dense,
        train_masks,
        loss,
        schedule,
        device,
        "segmentation probe",
        progress,
        skip_nonfinite=True,
    )

    if val_dense is None or val_masks is None:
        return probe, {}
    size, batch = tuple(val_masks.shape[-2:]), schedule.batch_size
    # labels, not logits, come back: C < 255 classes fit a byte
    labels = predict(
        probe, val_dense, batch, device, lambda x: probe(x, size).argmax(1).to(torch.uint8)
    )
    pairs = zip(labels.split(batch), val_masks.split(batch), strict=True)
    metrics = segmentation_scores(sum(confusion(p, t, num_classes) for p, t in pairs))
    logger.info(
        "segmentation probe: mIoU %.4f, pixel acc %.4f", metrics["miou"], metrics["pixel_acc"]
    )
    return probe, metrics


# ---------------------------------------------------------------------------- stellar eval seg
def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    add_keys(p, ("dense", "lowrank"))
    p.add_argument("--train", required=True, help="ADE20K folder, or images/ beside masks/")
    p.add_argument("--val", default=None, help="validation folder (default: --train's)")
    p.add_argument(
        "--num-classes", type=positive_int, required=True, help="label values 0..N-1 (255: ignored)"
    )
    p.add_argument(
        "--reduce-zero-label", action="store_true", help="ADE20K: 0 -> ignore, k -> k - 1"
    )
    SCHEDULE.add_arguments(p, "--probe-batch-size")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One row per model: mIoU and pixel accuracy on the validation split."""
    if not 1 <= args.num_classes < 255:
        raise UsageError(f"expected 1 <= --num-classes < 255, got {args.num_classes}")
    train = find_split(args.train, "train")
    val = find_split(args.val or args.train, "val")
    if val.images == train.images:
        logger.warning("no separate validation split: mIoU is measured on the training images")
    entries = load_entries(args)
    progress = not args.no_progress
    schedule = ProbeSchedule.from_args(args, args.probe_batch_size)
    masks: dict[int, tuple[torch.Tensor, ...]] = {}  # per resolution, all read before any feature
    for res in sorted({e.resolution for e in entries}):
        masks[res] = tuple(
            load_label_maps(
                s.labels, res, args.num_classes, args.reduce_zero_label, progress=progress
            )
            for s in (train, val)
        )
    rows = []
    kw = dict(
        batch_size=args.batch_size, fp16=True, num_workers=args.num_workers, progress=progress
    )
    for e in entries:
        tr, va = (  # images stretched to the square their label maps were resized to
            extract_features(e.model, EvalImages(s.images, e.resolution, crop=False), [e.key], **kw)
            for s in (train, val)
        )
        train_masks, val_masks = masks[e.resolution]
        _, metrics = train_segmentation_probe(
            tr[e.key], train_masks[tr["indices"]], va[e.key], val_masks[va["indices"]],
            args.num_classes, schedule, e.model.device, progress,
        )  # fmt: skip
        rows.append(e.row(**metrics, num_train=len(tr["paths"]), num_val=len(va["paths"])))
    return {"rows": rows, "layout": {"train": train.layout, "val": val.layout}}


def tables(result: dict[str, Any]) -> list[str]:
    cols = [
        MODEL,
        KEY,
        ("mIoU %", lambda r: percent(r["miou"])),
        ("pixel acc %", lambda r: percent(r["pixel_acc"])),
    ]
    return [format_table(cols, result["rows"])]
