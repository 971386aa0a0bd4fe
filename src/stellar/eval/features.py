"""Pooled, labelled features of the classification protocols (linear probe and kNN).

Features are the model's output ``key`` mean-pooled over its tokens batch by batch, from the
evaluation view (shorter side 256/224 of the resolution, centre crop), or read from a
``stellar extract`` folder of the same model and view. Labels are class sub-folders; the
validation classes are mapped onto the training classes by name, so a validation folder may
hold a subset of them.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from stellar.data.folder import EvalImages, require_classes
from stellar.errors import UsageError
from stellar.eval.common import (
    KEY,
    MODEL,
    Column,
    Entry,
    add_common,
    add_keys,
    check_folder,
    load_entries,
    percent,
)
from stellar.eval.encoder import extract_features, pool_features, weights_fingerprint
from stellar.eval.shards import differences, load_features, read_meta
from stellar.models.stellar import STELLAR

logger = logging.getLogger(__name__)

EVAL_RESIZE_RATIO = 256 / 224


@dataclass
class LabelledFeatures:
    """(N, d) float32 pooled features ``x``, (N,) int64 labels ``y`` into ``classes``."""

    x: Tensor
    y: Tensor
    classes: list[str]

    def __len__(self) -> int:
        return self.x.shape[0]

    def labels_in(self, reference: Sequence[str]) -> Tensor:
        """``y`` re-indexed into ``reference``'s class order (validation labels in the training
        classes); a class the labels use that ``reference`` lacks is an error."""
        index = {c: k for k, c in enumerate(reference)}
        used = sorted({self.classes[i] for i in self.y.unique().tolist()})
        unknown = [c for c in used if c not in index]
        if unknown:
            raise UsageError(
                f"validation classes {unknown[:10]} do not exist in the training set "
                f"({len(reference)} classes); expected the same class folder names"
            )
        table = torch.tensor([index.get(c, -1) for c in self.classes], dtype=torch.int64)
        return table[self.y.long()]


# The first columns of the linear and kNN tables.
ACCURACY_COLUMNS: list[Column] = [
    MODEL,
    KEY,
    ("top-1 %", lambda r: percent(r["top1"])),
    ("top-5 %", lambda r: percent(r["top5"])),
]


def add_classification_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``stellar eval linear`` and ``knn`` share."""
    add_common(p)
    add_keys(p, STELLAR.feature_keys)
    p.add_argument("--train", default=None, help="training folder")
    p.add_argument("--val", default=None, help="validation folder")
    p.add_argument("--train-features", default=None, help="`stellar extract` folder (train)")
    p.add_argument("--val-features", default=None, help="`stellar extract` folder (val)")


def classification_setup(
    args: argparse.Namespace, augmented: bool = False
) -> tuple[list[Entry], Path | None, Path | None]:
    """Check a linear / kNN run's inputs, then load its models: ``(entries, train folder, val
    folder)``, None for a folder that a feature folder replaces."""
    if augmented and args.train_features:
        raise UsageError(
            "--augmented encodes new crops every epoch: it needs --train (images), not "
            "--train-features"
        )
    # the baseline always reads images; STELLAR reads them where no feature folder is given
    with_baseline = args.baseline is not None
    for split in ("train", "val"):
        if getattr(args, split) and getattr(args, f"{split}_features") and not with_baseline:
            raise UsageError(f"pass --{split} or --{split}-features (both: only with --baseline)")
    alt = "" if with_baseline else " (or {}-features)"
    train_dir = val_dir = None
    if not args.train_features or with_baseline:
        train = check_folder(args.train, "--train" + alt.format("--train"))
        train_dir, train_classes = train.root, train.require_labels("--train")
    if not args.val_features or with_baseline:
        val = check_folder(args.val, "--val" + alt.format("--val"))
        val_dir, val_classes = val.root, val.require_labels("--val")
    if train_dir is not None and val_dir is not None:
        unknown = sorted(set(val_classes) - set(train_classes))
        if unknown:
            raise UsageError(
                f"validation classes {unknown[:10]} of {str(val_dir)!r} have no folder in "
                f"--train {str(train_dir)!r}; expected the same class folder names"
            )
    stored = {"--train-features": args.train_features, "--val-features": args.val_features}
    metas = {flag: read_meta(Path(root)) for flag, root in stored.items() if root}
    for flag, meta in metas.items():  # as require_labels checks a folder
        require_classes(meta["classes"], f"{flag} {stored[flag]!r}")
    # the images STELLAR's rows come from, by their file list's hash (a folder's, or recorded)
    train_files = metas["--train-features"]["files"] if args.train_features else train.files_id
    val_files = metas["--val-features"]["files"] if args.val_features else val.files_id
    if train_files == val_files:
        logger.warning("--val is the training set: accuracy is measured on the training images")
    entries = load_entries(args)
    ours, res = entries[0].model, entries[0].resolution
    precisions = set()  # of the features the probe reads: this run's encoding, the folders'
    for flag, root in stored.items():
        if not root:
            precisions.add(args.precision)  # this run's, as stellar eval resolved it
            continue
        # --key features of this model's weights and of the evaluation view at this resolution
        # (so two folders also match)
        meta = metas[flag]
        precisions.add(meta.get("precision", "an unrecorded precision"))
        expected = {"weights": weights_fingerprint(ours), "resolution": res}
        expected |= {"resize_ratio": EVAL_RESIZE_RATIO, "crop": True}
        diff = differences(meta, expected)
        diff += [] if args.key in meta["keys"] else [f"keys: {meta['keys']} lack {args.key!r}"]
        if diff:
            raise UsageError(
                f"{flag} {root!r} holds features of other settings than this run "
                f"({'; '.join(diff)}); run `stellar extract` on class folders with this --model, "
                f"--resolution {res}, --keys {args.key} and the default --resize-ratio"
            )
    args.precision = " and ".join(sorted(precisions))  # what metrics.json records
    if len(precisions) > 1:
        logger.warning("the probe mixes features encoded in %s", args.precision)
    return entries, train_dir, val_dir


def split_features(
    args: argparse.Namespace, entry: Entry, folder: Path | None, stored_dir: str | None
) -> LabelledFeatures:
    """Pooled labelled features of one split: a feature folder (STELLAR) or its images, read in
    the evaluation view."""
    if entry.kind == "stellar" and stored_dir:
        features = load_features(stored_dir, [entry.key])
        x = pool_features(features[entry.key].float())
        return LabelledFeatures(x, features["labels"], features["classes"])
    dataset = EvalImages(folder, entry.resolution, resize_ratio=EVAL_RESIZE_RATIO)
    out = extract_features(
        entry.model, dataset, [entry.key], args.batch_size, pool=True,
        num_workers=args.num_workers, progress=not args.no_progress,
    )  # fmt: skip
    return LabelledFeatures(out[entry.key], out["labels"], dataset.require_labels(str(folder)))
