"""Linear, kNN and segmentation probe runs on a frozen model (the paper's evaluation protocols).

These functions turn folders into features and call the probe maths of
:mod:`stellar.eval.linear`, :mod:`stellar.eval.knn` and :mod:`stellar.eval.segmentation`.

- Classification features: the model's output ``key`` mean-pooled over its tokens, computed
  batch by batch (the token axis never accumulates), from the deterministic evaluation view
  (shorter side -> 256/224 of the resolution, centre crop).
- Labels: class sub-folders; the validation classes are mapped onto the training classes by
  name, so a validation folder may hold a subset of the classes (an unknown class is an error).
- The augmented linear path (:func:`train_linear_augmented`) follows the paper: every epoch
  each training image is seen once as a fresh RandomResizedCrop(scale 0.2-1, ratio 3/4-4/3)
  + horizontal flip of its canvas, encoded by the frozen model inside the loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from stellar.data.augment import random_resized_crop
from stellar.data.folder import ImageFolder
from stellar.data.loader import build_loader
from stellar.eval.extract import encode_batch, extract_features, load_features, stored_classes
from stellar.eval.images import EvalImages, decodable_batches
from stellar.eval.knn import knn_accuracy
from stellar.eval.linear import (
    LinearProbe,
    accuracy_topk,
    pool_features,
    predict_logits,
    train_linear_probe,
)
from stellar.eval.segdata import SegmentationSplit
from stellar.eval.segmentation import train_segmentation_probe
from stellar.runtime import autocast

__all__ = [
    "LabelledFeatures",
    "class_indices",
    "features_from_dir",
    "pooled_features",
    "run_knn",
    "run_linear",
    "run_seg",
    "train_linear_augmented",
]

logger = logging.getLogger(__name__)

AUG_SCALE: tuple[float, float] = (0.2, 1.0)
AUG_RATIO: tuple[float, float] = (3 / 4, 4 / 3)
EVAL_RESIZE_RATIO = 256 / 224


class LabelledFeatures:
    """Pooled features with labels and the class names the labels index.

    Attributes:
        x: (N, d) float32 features.
        y: (N,) int64 labels.
        classes: class names, ``classes[y[i]]`` is the class of row i (None when unknown).
    """

    def __init__(self, x: Tensor, y: Tensor, classes: list[str] | None) -> None:
        self.x, self.y, self.classes = x, y, classes

    def __len__(self) -> int:
        return self.x.shape[0]


def class_indices(names: Sequence[str], labels: Tensor, reference: Sequence[str]) -> Tensor:
    """Re-index ``labels`` (indices into ``names``) into ``reference``'s class order.

    Raises:
        ValueError: a class of ``names`` used by ``labels`` is not in ``reference``.
    """
    index = {c: k for k, c in enumerate(reference)}
    used = sorted({names[i] for i in labels.unique().tolist()})
    unknown = [c for c in used if c not in index]
    if unknown:
        raise ValueError(
            f"validation classes {unknown[:10]} do not exist in the training set "
            f"({len(reference)} classes); expected the same class folder names"
        )
    table = torch.tensor([index.get(c, -1) for c in names], dtype=torch.int64)
    return table[labels.long()]


@torch.inference_mode()
def pooled_features(
    model: nn.Module,
    dataset: EvalImages,
    key: str,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Mean-pooled ``key`` features of a dataset, pooled batch by batch.

    Returns:
        ``(x (N, d) float32, labels (N,) int64)`` for the decodable images.
    """
    xs, ys = [], []
    pin = model.device.type == "cuda"
    batches = decodable_batches(dataset, batch_size, num_workers, pin, f"features[{key}]", progress)
    for batch in batches:
        out = encode_batch(model, batch["image"], [key])
        xs.append(pool_features(out[key]).float())
        ys.append(batch["label"])
    return torch.cat(xs), torch.cat(ys)


def labelled_features(
    model: nn.Module,
    root: str | Path,
    key: str,
    resolution: int,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> LabelledFeatures:
    """Pooled features and labels of a class-folder tree (evaluation view)."""
    dataset = EvalImages(root, resolution, resize_ratio=EVAL_RESIZE_RATIO)
    dataset.require_labels(str(root))
    x, y = pooled_features(model, dataset, key, batch_size, num_workers, progress)
    return LabelledFeatures(x, y, list(dataset.classes))


def features_from_dir(out_dir: str | Path, key: str) -> LabelledFeatures:
    """Pooled ``key`` features of a ``stellar extract`` folder, with labels.

    Class names come from ``meta.json`` (stored by ``stellar extract``); for folders written
    before it stored them, they are recovered from the stored paths (the parent folder of each
    image) when that is consistent, so that train and val folders can be aligned by name.

    Raises:
        ValueError: the folder lacks ``key`` or its images carry no labels.
    """
    features, labels, paths = load_features(out_dir, [key])
    x = pool_features(features[key].float())
    if labels.numel() == 0 or bool((labels < 0).any()):
        raise ValueError(
            f"{out_dir} was extracted from images without class sub-folders (labels -1); "
            "expected a labelled extraction"
        )
    classes = stored_classes(out_dir) or _classes_from_paths(labels, paths)
    if classes is None:
        logger.warning("%s: class names not recoverable from paths; labels used as stored", out_dir)
    return LabelledFeatures(x, labels.long(), classes)


def _classes_from_paths(labels: Tensor, paths: list[str]) -> list[str] | None:
    """Class names from each image's parent folder, or None when that is ambiguous."""
    names: dict[int, set[str]] = {}
    for lab, path in zip(labels.tolist(), paths, strict=True):
        names.setdefault(lab, set()).add(Path(path).parent.name)
    if any(len(v) != 1 for v in names.values()):
        return None
    flat = [next(iter(names[k])) for k in sorted(names)]
    if len(set(flat)) != len(flat):
        return None
    return [next(iter(names[k])) if k in names else f"<class {k}>" for k in range(max(names) + 1)]


def align_val(train: LabelledFeatures, val: LabelledFeatures) -> tuple[Tensor, int]:
    """Validation labels in the training class order, and the class count.

    Raises:
        ValueError: only one side knows its class names, so the two cannot be aligned.
    """
    if train.classes is not None and val.classes is not None:
        return class_indices(val.classes, val.y, train.classes), len(train.classes)
    if (train.classes is None) != (val.classes is None):
        unnamed = "training" if train.classes is None else "validation"
        raise ValueError(
            f"the {unnamed} features carry no class names, so their labels cannot be matched "
            "to the other split's classes; expected both splits with class names: re-run "
            "`stellar extract` (it now stores them) or pass image folders"
        )
    num = int(max(train.y.max(), val.y.max())) + 1
    return val.y, num


def run_linear(
    train: LabelledFeatures,
    val: LabelledFeatures,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, float]:
    """Linear probe on cached pooled features: ``{"top1", "top5", "train_top1"}`` in [0, 1]."""
    val_y, num = align_val(train, val)
    _, metrics = train_linear_probe(
        train.x,
        train.y,
        val.x,
        val_y,
        num,
        epochs,
        lr,
        weight_decay,
        batch_size,
        seed,
        device,
        progress,
    )
    return metrics


def run_knn(
    train: LabelledFeatures, val: LabelledFeatures, k: int = 20, temperature: float = 0.07
) -> dict[str, float]:
    """Weighted kNN (DINO): ``{"top1", "top5"}`` in [0, 1]."""
    val_y, num = align_val(train, val)
    return knn_accuracy(train.x, train.y, val.x, val_y, num, k=k, temperature=temperature)


def train_linear_augmented(
    model: nn.Module,
    key: str,
    train_root: str | Path,
    val: LabelledFeatures,
    resolution: int,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    num_workers: int = 0,
    scale: tuple[float, float] = AUG_SCALE,
    progress: bool = True,
) -> dict[str, float]:
    """The paper's augmented linear probe: fresh RandomResizedCrop + flip views every epoch.

    The frozen model encodes each epoch's views (batched, no gradients); the probe
    (LayerNorm -> Linear) trains with AdamW and a per-step cosine decay, as
    :func:`~stellar.eval.linear.train_linear_probe` does on cached features.

    Args:
        model: frozen STELLAR or baseline.
        key: pooled output used as the feature.
        train_root: class-folder tree of training images.
        val: pooled validation features (evaluation view) with class names.
        resolution: side of the crops fed to the model.
        epochs, lr, weight_decay, batch_size, seed: optimisation settings.
        num_workers: decoding workers.
        scale: RandomResizedCrop area range.
        progress: tqdm bars.

    Returns:
        ``{"top1", "top5", "train_top1"}`` in [0, 1]; ``train_top1`` is the running accuracy
        on the last epoch's augmented views.

    Raises:
        ValueError: ``epochs`` or ``batch_size`` < 1, or unlabelled training images.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"expected epochs >= 1 and batch_size >= 1, got {epochs}, {batch_size}")
    device = model.device
    folder = ImageFolder(train_root, canvas_size=round(resolution * EVAL_RESIZE_RATIO))
    folder.require_labels(str(train_root))
    classes = list(folder.classes)
    val_y = class_indices(val.classes, val.y, classes) if val.classes is not None else val.y
    loader = build_loader(
        folder,
        batch_size,
        num_workers,
        shuffle=True,
        seed=seed,
        drop_last=False,
        distributed=False,
        pin_memory=device.type == "cuda",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(val.x.shape[1], len(classes))
    probe = probe.to(device).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    )
    gen = torch.Generator(device=device).manual_seed(seed)
    correct = seen = 0
    bar = tqdm(range(epochs), desc="linear probe (augmented)", disable=not progress)
    for epoch in bar:
        loader.set_epoch(epoch)
        correct = seen = 0
        for batch in loader:
            canvas = batch["canvas"].to(device, non_blocking=True)
            views = random_resized_crop(
                canvas,
                batch["size"].to(device),
                resolution,
                1,
                scale=scale,
                ratio=AUG_RATIO,
                generator=gen,
                flip_p=0.5,
            )[:, 0]
            with torch.no_grad(), autocast(device):
                feats = pool_features(model.forward_encode(views)[key]).float()
            target = batch["label"].to(device)
            logits = probe(feats)
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += int((logits.argmax(1) == target).sum())
            seen += target.numel()
        bar.set_postfix(loss=f"{loss.item():.4f}", acc=f"{correct / max(seen, 1):.3f}")
    metrics = accuracy_topk(predict_logits(probe, val.x, device=device), val_y)
    metrics["train_top1"] = correct / max(seen, 1)
    return metrics


@torch.inference_mode()
def _grid_features(
    model: nn.Module,
    images: list[Path],
    key: str,
    resolution: int,
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> tuple[Tensor, Tensor]:
    """``key`` grids (N, n, d) float16 of images stretched to the resolution, and their index."""
    dataset = EvalImages(images, resolution, crop=False)
    out = extract_features(
        model, dataset, [key], batch_size, num_workers, fp16=True, progress=progress
    )
    return out[key], out["index"]


def run_seg(
    model: nn.Module,
    key: str,
    train: SegmentationSplit,
    val: SegmentationSplit,
    train_masks: Tensor,
    val_masks: Tensor,
    num_classes: int,
    resolution: int,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 16,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Segmentation probe: BatchNorm -> 1x1 conv on the frozen ``key`` grid, dataset-level mIoU.

    Images are stretched to ``resolution`` squared (nothing is cut off) and their label maps
    were resized to the same square with nearest sampling (:func:`load_label_maps`), so the
    metric is measured at the evaluation resolution.

    Returns:
        ``{"miou", "pixel_acc"}`` in [0, 1] and ``iou_per_class`` (list, None where a class is
        absent from both prediction and target).
    """
    x_tr, idx_tr = _grid_features(
        model, train.images, key, resolution, batch_size, num_workers, progress
    )
    x_va, idx_va = _grid_features(
        model, val.images, key, resolution, batch_size, num_workers, progress
    )
    _, metrics = train_segmentation_probe(
        x_tr,
        train_masks[idx_tr],
        x_va,
        val_masks[idx_va],
        num_classes,
        epochs,
        lr,
        weight_decay,
        batch_size,
        seed=seed,
        device=model.device,
        layout="auto",
        progress=progress,
    )
    iou = metrics["iou_per_class"].tolist()
    return {
        "miou": metrics["miou"],
        "pixel_acc": metrics["pixel_acc"],
        "iou_per_class": [None if math.isnan(v) else v for v in iou],
    }
