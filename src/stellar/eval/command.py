"""``stellar eval PROTOCOL``: the evaluation protocols of arXiv 2602.01905, frozen model.

Protocols (``stellar eval PROTOCOL --help`` lists every option):

- ``linear``: LayerNorm -> Linear probe on a mean-pooled output (``--key``, default
  ``sparse``), on features extracted once (or read from ``stellar extract`` folders) or, with
  ``--augmented``, on fresh RandomResizedCrop + flip views every epoch.
- ``knn``: weighted k-NN (DINO, k 20, T 0.07) on the same pooled features.
- ``seg``: BatchNorm -> 1x1 conv probe on the ``dense`` grid, dataset-level mIoU; ADE20K or
  images/ + masks/ folders (:mod:`stellar.eval.segdata`).
- ``recon``: a fresh pixel decoder trained on frozen ``lowrank`` features; PSNR, SSIM, and
  LPIPS / rFID when their local weights are passed (:mod:`stellar.eval.recon_probe`).
- ``invariance``: crop-vs-original cosine distances and the equivariance partition of
  ΔZ into its L and S parts (:mod:`stellar.eval.invariance`).

``--baseline mae:PATH`` (or ``vit:PATH``) adds a row for a plain ViT read from a local MAE / HF
ViT checkpoint (:mod:`stellar.eval.baseline`), evaluated with ``--baseline-key`` (``cls`` or
``dense``; by default ``--key`` when the baseline has it, else ``dense``).

Every protocol prints a table (accuracies and mIoU in percent), writes ``OUT/metrics.json``
(fractions in [0, 1], PSNR in dB, NaN as null) and checks its inputs before any model or data
work: folders that hold no images, unlabelled classification folders, feature keys a model
does not produce, unmatched segmentation pairs and missing metric weight files all raise a
ValueError naming the problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from stellar.data.folder import ImageFolder
from stellar.eval.baseline import (
    BASELINE_KEYS,
    STELLAR_KEYS,
    feature_keys,
    load_baseline,
    parse_baseline,
)
from stellar.eval.images import EvalImages, find_images
from stellar.runtime import pick_device

__all__ = ["PROTOCOLS", "add_arguments", "format_table", "run"]

logger = logging.getLogger(__name__)

PROTOCOLS: dict[str, str] = {
    "linear": "linear probe (top-1 / top-5) on pooled frozen features",
    "knn": "weighted k-NN classification (DINO protocol)",
    "seg": "linear segmentation probe on the dense grid (mIoU)",
    "recon": "reconstruction probe: a fresh decoder on frozen features (PSNR, SSIM, LPIPS, rFID)",
    "invariance": "crop invariance of each representation and the L / S equivariance partition",
}
# Keys each protocol can use on STELLAR (default first) and on a plain-ViT baseline.
PROTOCOL_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "linear": (STELLAR_KEYS, BASELINE_KEYS),
    "knn": (STELLAR_KEYS, BASELINE_KEYS),
    "seg": (("dense", "lowrank"), ("dense",)),
    "recon": (("lowrank", "dense"), ("dense",)),
}
METRICS_NAME = "metrics.json"


# ---------------------------------------------------------------------------- arguments
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="STELLAR checkpoint path, run dir or model name")
    p.add_argument(
        "--baseline", default=None, help="add a plain-ViT row: mae:PATH or vit:PATH (local files)"
    )
    p.add_argument("--out", default=None, help="output folder (default: eval-<protocol>)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
    p.add_argument("--num-workers", type=int, default=0, help="image decoding workers")
    p.add_argument(
        "--resolution", type=int, default=None, help="input side (default: each model's native)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")


def _keys(p: argparse.ArgumentParser, protocol: str) -> None:
    ours, theirs = PROTOCOL_KEYS[protocol]
    p.add_argument("--key", default=ours[0], help=f"STELLAR feature: {' | '.join(ours)}")
    p.add_argument(
        "--baseline-key",
        default=None,
        help=f"baseline feature: {' | '.join(theirs)} (default: --key if possible, else dense)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stellar eval``: one sub-command per protocol."""
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    for name, help_text in PROTOCOLS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        if name in PROTOCOL_KEYS:
            _keys(p, name)
        if name in ("linear", "knn", "seg", "recon"):
            p.add_argument("--train", default=None, help="training folder")
            p.add_argument("--val", default=None, help="validation folder")
    linear, knn, seg, recon, inv = (sub.choices[n] for n in PROTOCOLS)
    for p in (linear, knn):
        p.add_argument("--train-features", default=None, help="`stellar extract` folder (train)")
        p.add_argument("--val-features", default=None, help="`stellar extract` folder (val)")
    linear.add_argument("--epochs", type=int, default=30)
    linear.add_argument("--lr", type=float, default=1e-3)
    linear.add_argument("--weight-decay", type=float, default=1e-4)
    linear.add_argument("--probe-batch-size", type=int, default=256)
    linear.add_argument(
        "--augmented",
        action="store_true",
        help="RandomResizedCrop(0.2-1) + flip views encoded every epoch (the paper's recipe)",
    )
    knn.add_argument("--k", type=int, default=20)
    knn.add_argument("--temperature", type=float, default=0.07)
    seg.add_argument("--num-classes", type=int, required=True)
    seg.add_argument(
        "--reduce-zero-label", action="store_true", help="ADE20K: 0 -> ignore, k -> k - 1"
    )
    seg.add_argument("--epochs", type=int, default=20)
    seg.add_argument("--lr", type=float, default=1e-3)
    seg.add_argument("--weight-decay", type=float, default=1e-4)
    seg.add_argument("--probe-batch-size", type=int, default=16)
    recon.add_argument("--epochs", type=int, default=20)
    recon.add_argument("--lr", type=float, default=1e-4)
    recon.add_argument("--weight-decay", type=float, default=1e-4)
    recon.add_argument("--decoder-depth", type=int, default=6)
    recon.add_argument("--target", default="pixel", help="pixel (the VQ target is not implemented)")
    recon.add_argument("--eval-every", type=int, default=0, help="val PSNR every N epochs")
    recon.add_argument("--fp16-features", action="store_true", help="cache features as float16")
    recon.add_argument("--lpips-vgg", default=None, help="torchvision vgg16 state dict (local)")
    recon.add_argument("--lpips-weights", default=None, help="lpips v0.1 vgg.pth (local)")
    recon.add_argument("--fid-weights", default=None, help="pt_inception-2015-12-05 .pth (local)")
    inv.add_argument("--data", required=True, help="image folder")
    inv.add_argument("--crops", type=int, default=8, help="random crops per image")
    inv.add_argument(
        "--scale", type=float, nargs=2, default=(0.3, 1.0), metavar=("MIN", "MAX"), help="crop area"
    )
    inv.add_argument("--flip-p", type=float, default=0.0, help="flip probability of a crop")
    inv.add_argument(
        "--transforms", default="flip,shift", help="equivariance transforms: flip, shift"
    )
    inv.add_argument("--shift", type=int, default=1, help="translation of 'shift', in patches")
    inv.add_argument("--max-images", type=int, default=None, help="use the first N images only")


# ---------------------------------------------------------------------------- validation
def _scan_folder(root: str | None, what: str) -> ImageFolder:
    """The images of a folder (scanned only, nothing decoded)."""
    if root is None:
        raise ValueError(f"expected {what}: pass a folder of images")
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"expected {what} to be a folder, got {str(path)!r}")
    try:
        return ImageFolder(path)
    except ValueError:
        raise ValueError(f"expected image files in {what} {str(path)!r}, found none") from None


def _check_folder(root: str | None, what: str) -> Path:
    """A folder that holds images."""
    return _scan_folder(root, what).root


def _check_labelled_folder(root: str | None, what: str) -> tuple[Path, set[str]]:
    """A folder of images in class sub-folders, and the names of those classes."""
    folder = _scan_folder(root, what)
    return folder.root, set(folder.require_labels(what))


# Numeric options and what each must satisfy; checked before any model or data work.
_NUMBER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "num_workers": (lambda v: v >= 0, ">= 0"),
    "resolution": (lambda v: v >= 1, ">= 1"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "lr": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "weight_decay": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "probe_batch_size": (lambda v: v >= 1, ">= 1"),
    "k": (lambda v: v >= 1, ">= 1"),
    "temperature": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "decoder_depth": (lambda v: v >= 1, ">= 1"),
    "eval_every": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "crops": (lambda v: v >= 1, ">= 1"),
    "flip_p": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "shift": (lambda v: v >= 1, ">= 1 patch"),
    "max_images": (lambda v: v >= 1, ">= 1"),
}


def _check_numbers(args: argparse.Namespace) -> None:
    """Every numeric option the protocol has, against :data:`_NUMBER_RULES`."""
    for name, (ok, expected) in _NUMBER_RULES.items():
        value = getattr(args, name, None)
        if value is not None and not ok(value):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag}: expected {expected}, got {value}")


def _check_val_classes(
    train: Path, train_classes: set[str], val: Path, val_classes: set[str]
) -> None:
    """Every validation class folder must name a training class folder."""
    unknown = sorted(val_classes - train_classes)
    if unknown:
        raise ValueError(
            f"validation classes {unknown[:10]} of {str(val)!r} have no folder in --train "
            f"{str(train)!r}; expected the same class folder names"
        )


def _check_features_dir(root: str, key: str, what: str) -> Path:
    path = Path(root)
    meta = path / "meta.json"
    if not meta.is_file():
        raise ValueError(
            f"expected {what} to be a `stellar extract` folder (meta.json), got {root!r}"
        )
    stored = json.loads(meta.read_text()).get("keys", [])
    if key not in stored:
        raise ValueError(
            f"{what} {root!r} stores features {stored}, not {key!r}; extract it with --keys {key}"
        )
    return path


def _check_same_extraction(train: str, val: str) -> None:
    """Both feature folders must come from the same model and preprocessing."""
    metas = [json.loads((Path(p) / "meta.json").read_text()) for p in (train, val)]
    for meta in metas:  # the same checkpoint may have been named by two different paths
        if os.path.exists(meta.get("model", "")):
            meta["model"] = os.path.realpath(meta["model"])
    a, b = metas
    differ = [
        f"{k} {a.get(k)!r} vs {b.get(k)!r}"
        for k in ("model", "resolution", "resize_ratio", "crop")
        if a.get(k) != b.get(k)
    ]
    if differ:
        raise ValueError(
            f"--train-features and --val-features were extracted differently ({'; '.join(differ)}"
            "); expected both from the same model and settings"
        )


def _resolve_keys(args: argparse.Namespace) -> tuple[str, str | None]:
    """(STELLAR key, baseline key or None), checked against what each model produces."""
    ours, theirs = PROTOCOL_KEYS[args.protocol]
    if args.key not in ours:
        produced = f"STELLAR produces {', '.join(STELLAR_KEYS)}"
        raise ValueError(
            f"--key {args.key!r} cannot be used by `stellar eval {args.protocol}`: expected one of "
            f"{', '.join(ours)} ({produced})"
        )
    if args.baseline is None:
        if args.baseline_key is not None:
            raise ValueError("--baseline-key needs --baseline mae:PATH or vit:PATH")
        return args.key, None
    key = args.baseline_key
    if key is None:
        key = args.key if args.key in theirs else theirs[-1]
    if key not in theirs:
        raise ValueError(
            f"--baseline-key {key!r}: a plain ViT baseline produces only "
            f"{', '.join(BASELINE_KEYS)} (no concept tokens); `stellar eval {args.protocol}` "
            f"can use {', '.join(theirs)}"
        )
    return args.key, key


def _resolution(args: argparse.Namespace, model: nn.Module) -> int:
    res = args.resolution or model.config.encoder.image_size
    if res % model.patch_size:
        raise ValueError(
            f"expected --resolution divisible by the patch size {model.patch_size}, got {res}"
        )
    return res


class _Entry:
    """One table row to compute: a model, its label, kind and feature key."""

    def __init__(self, name: str, kind: str, model: nn.Module | None, key: str | None) -> None:
        self.name, self.kind, self.model, self.key = name, kind, model, key

    def row(self, **metrics: Any) -> dict[str, Any]:
        return {"model": self.name, "kind": self.kind, "key": self.key, **metrics}


def _load_entries(
    args: argparse.Namespace, key: str | None, baseline_key: str | None, load_stellar: bool = True
) -> list[_Entry]:
    from stellar.hub import load_model

    device = pick_device(args.device)
    entries = []
    torch.manual_seed(args.seed)  # a random-init preset gets the same weights on every run
    model = load_model(args.model, purpose="encode", device=device) if load_stellar else None
    entries.append(_Entry(str(args.model), "stellar", model, key))
    if args.baseline is not None:
        base = load_baseline(args.baseline, device=device)
        entries.append(_Entry(base.name, "baseline", base, baseline_key))
    for e in entries:
        if e.model is not None:
            _resolution(args, e.model)
            if e.key is not None and e.key not in feature_keys(e.model):
                raise ValueError(f"{e.name} does not produce {e.key!r}")
    return entries


# ---------------------------------------------------------------------------- protocols
def _features(
    entry: _Entry, folder: Path | None, stored_dir: str | None, res: int, common: dict[str, Any]
) -> Any:
    """Pooled labelled features of one split: a `stellar extract` folder (STELLAR) or images."""
    from stellar.eval import probe_runs as pr

    if entry.kind == "stellar" and stored_dir:
        return pr.features_from_dir(stored_dir, entry.key)
    return pr.labelled_features(entry.model, folder, entry.key, res, **common)


def _classification(args: argparse.Namespace) -> dict[str, Any]:
    from stellar.eval import probe_runs as pr

    key, baseline_key = _resolve_keys(args)
    progress = not args.no_progress
    augmented = args.protocol == "linear" and args.augmented
    if augmented and args.train_features:
        raise ValueError(
            "--augmented encodes new crops every epoch: it needs --train (images), not "
            "--train-features"
        )
    if args.train_features:
        _check_features_dir(args.train_features, key, "--train-features")
    if args.val_features:
        _check_features_dir(args.val_features, key, "--val-features")
    if args.train_features and args.val_features:
        _check_same_extraction(args.train_features, args.val_features)
    # the baseline always reads images; STELLAR reads them where no feature folder is given
    with_baseline = args.baseline is not None
    train_dir = val_dir = None
    if not args.train_features or with_baseline:
        train_dir, train_classes = _check_labelled_folder(args.train, "--train")
    if not args.val_features or with_baseline:
        val_dir, val_classes = _check_labelled_folder(args.val, "--val")
    if train_dir is not None and val_dir is not None:
        _check_val_classes(train_dir, train_classes, val_dir, val_classes)
    load = augmented or not (args.train_features and args.val_features)
    entries = _load_entries(args, key, baseline_key, load_stellar=load)
    rows = []
    for e in entries:
        res = _resolution(args, e.model) if e.model is not None else 0
        common = dict(batch_size=args.batch_size, num_workers=args.num_workers, progress=progress)
        val = _features(e, val_dir, args.val_features, res, common)
        if augmented:
            probe = dict(
                epochs=args.epochs,
                lr=args.lr,
                weight_decay=args.weight_decay,
                batch_size=args.probe_batch_size,
                seed=args.seed,
                progress=progress,
            )
            metrics = pr.train_linear_augmented(
                e.model, e.key, train_dir, val, res, num_workers=args.num_workers, **probe
            )
            rows.append(e.row(**metrics, num_train=len(find_images(train_dir)), num_val=len(val)))
            continue
        train = _features(e, train_dir, args.train_features, res, common)
        if args.protocol == "knn":
            metrics = pr.run_knn(train, val, args.k, args.temperature)
            rows.append(e.row(**metrics, k=args.k, num_train=len(train), num_val=len(val)))
            continue
        device = e.model.device if e.model is not None else pick_device(args.device)
        metrics = pr.run_linear(
            train,
            val,
            args.epochs,
            args.lr,
            args.weight_decay,
            args.probe_batch_size,
            args.seed,
            device,
            progress,
        )
        rows.append(e.row(**metrics, num_train=len(train), num_val=len(val)))
    return {"rows": rows, "augmented": augmented}


def _seg(args: argparse.Namespace) -> dict[str, Any]:
    from stellar.eval.probe_runs import run_seg
    from stellar.eval.segdata import find_split, load_label_maps

    key, baseline_key = _resolve_keys(args)
    if args.train is None:
        raise ValueError("expected --train: a segmentation folder (ADE20K or images/ + masks/)")
    if not 1 <= args.num_classes < 255:
        raise ValueError(f"expected 1 <= --num-classes < 255, got {args.num_classes}")
    train = find_split(args.train, "train")
    val = find_split(args.val or args.train, "val")
    if val.images == train.images:
        logger.warning("no separate validation split: mIoU is measured on the training images")
    entries = _load_entries(args, key, baseline_key)
    progress = not args.no_progress
    masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for e in entries:  # every label map is read and checked before any feature is computed
        res = _resolution(args, e.model)
        if res not in masks:
            masks[res] = tuple(
                load_label_maps(
                    s.labels, res, args.num_classes, args.reduce_zero_label, progress=progress
                )
                for s in (train, val)
            )
    rows = []
    for e in entries:
        res = _resolution(args, e.model)
        metrics = run_seg(
            e.model,
            e.key,
            train,
            val,
            *masks[res],
            args.num_classes,
            res,
            epochs=args.epochs,
            lr=args.lr,
            weight_decay=args.weight_decay,
            batch_size=args.probe_batch_size,
            seed=args.seed,
            num_workers=args.num_workers,
            progress=progress,
        )
        rows.append(e.row(**metrics, num_train=len(train), num_val=len(val)))
    return {"rows": rows, "layout": {"train": train.layout, "val": val.layout}}


def _recon(args: argparse.Namespace) -> dict[str, Any]:
    from stellar.eval.fid import load_fid_inception
    from stellar.eval.lpips import load_lpips
    from stellar.eval.recon_probe import run_recon

    key, baseline_key = _resolve_keys(args)
    if args.target != "pixel":
        raise ValueError(
            f"--target {args.target!r}: only the pixel target is implemented (the VQ target "
            "would need the MaskGIT-VQGAN tokenizer)"
        )
    train_dir = _check_folder(args.train, "--train")
    val_dir = _check_folder(args.val, "--val")
    if (args.lpips_vgg is None) != (args.lpips_weights is None):
        raise ValueError("LPIPS needs both --lpips-vgg and --lpips-weights")
    for flag, path in (
        ("--lpips-vgg", args.lpips_vgg),
        ("--lpips-weights", args.lpips_weights),
        ("--fid-weights", args.fid_weights),
    ):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{flag} {path!r} is not a file")
    device = pick_device(args.device)
    unavailable = {}
    lpips_net = fid_net = None
    if args.lpips_vgg is not None:
        lpips_net = load_lpips(args.lpips_vgg, args.lpips_weights, device)
    else:
        unavailable["lpips"] = "no weights: pass --lpips-vgg and --lpips-weights (local files)"
    if args.fid_weights is not None:
        fid_net = load_fid_inception(args.fid_weights, device)
    else:
        unavailable["rfid"] = "no weights: pass --fid-weights (pt_inception-2015-12-05 .pth)"
    for name, why in unavailable.items():
        logger.warning("%s not computed: %s", name, why)
    entries = _load_entries(args, key, baseline_key)
    for e in entries[1:]:  # the baseline's probe decoder gets STELLAR's decoder size
        e.model.config.decoder = entries[0].model.config.decoder
        e.model.config.fourier_features = entries[0].model.config.fourier_features
    out = _out_dir(args)
    rows = []
    for i, e in enumerate(entries):
        res = _resolution(args, e.model)
        train = EvalImages(train_dir, res)
        val = EvalImages(val_dir, res)
        metrics = run_recon(
            e.model,
            train,
            val,
            e.key,
            depth=args.decoder_depth,
            epochs=args.epochs,
            lr=args.lr,
            weight_decay=args.weight_decay,
            batch_size=args.batch_size,
            seed=args.seed,
            num_workers=args.num_workers,
            fp16=args.fp16_features,
            eval_every=args.eval_every,
            lpips_net=lpips_net,
            fid_net=fid_net,
            grid_png=out / f"reconstructions_{i}_{e.kind}.png",
            progress=not args.no_progress,
        )
        if fid_net is not None and metrics["rfid"] is None:
            unavailable["rfid"] = "needs at least 2 validation images"
        rows.append(e.row(**metrics))
    return {"rows": rows, "unavailable": unavailable, "target": "pixel"}


def _invariance(args: argparse.Namespace) -> dict[str, Any]:
    from stellar.eval.invariance import TRANSFORMS, draw_invariance_chart, run_invariance

    data = _check_folder(args.data, "--data")
    transforms = [t.strip() for t in args.transforms.split(",") if t.strip()]
    bad = [t for t in transforms if t not in TRANSFORMS]
    if bad:
        raise ValueError(f"--transforms: expected names among {', '.join(TRANSFORMS)}, got {bad}")
    lo, hi = args.scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"--scale: expected 0 < MIN <= MAX <= 1, got {lo} {hi}")
    entries = _load_entries(args, None, None)
    rows = []
    for e in entries:
        res = _resolution(args, e.model)
        dataset = EvalImages(data, res)
        if args.shift >= res // e.model.patch_size and "shift" in transforms:
            raise ValueError(f"--shift {args.shift} must be smaller than the grid width")
        subset = dataset
        if args.max_images is not None:
            subset = Subset(dataset, range(min(args.max_images, len(dataset))))
        result = run_invariance(
            e.model,
            subset,
            args.crops,
            (lo, hi),
            args.flip_p,
            transforms,
            args.shift,
            args.batch_size,
            args.num_workers,
            args.seed,
            not args.no_progress,
        )
        rows.append(e.row(**result))
    png = draw_invariance_chart(rows, _out_dir(args) / "invariance.png")
    return {"rows": rows, "png": str(png)}


_RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "linear": _classification,
    "knn": _classification,
    "seg": _seg,
    "recon": _recon,
    "invariance": _invariance,
}


# ---------------------------------------------------------------------------- output
def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _num(fmt: str) -> Callable[[Any], str]:
    def f(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    return f


def format_table(columns: Sequence[tuple[str, Callable[[dict], str]]], rows: Sequence[dict]) -> str:
    """A plain-text table: one column per ``(header, cell(row) -> str)``."""
    cells = [[h for h, _ in columns]] + [[fn(r) for _, fn in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _tables(protocol: str, result: dict[str, Any]) -> list[str]:
    rows = result["rows"]
    model = ("model", lambda r: str(r["model"]))
    key = ("key", lambda r: str(r.get("key")))
    if protocol in ("linear", "knn"):
        cols = [
            model,
            key,
            ("top-1 %", lambda r: _pct(r["top1"])),
            ("top-5 %", lambda r: _pct(r["top5"])),
        ]
        if protocol == "linear":
            cols.append(("train top-1 %", lambda r: _pct(r.get("train_top1"))))
        else:
            cols.append(("k", lambda r: str(r["k"])))
        return [format_table(cols, rows)]
    if protocol == "seg":
        cols = [
            model,
            key,
            ("mIoU %", lambda r: _pct(r["miou"])),
            ("pixel acc %", lambda r: _pct(r["pixel_acc"])),
        ]
        return [format_table(cols, rows)]
    if protocol == "recon":
        cols = [
            model,
            key,
            ("PSNR dB", lambda r: _num(".2f")(r["psnr"])),
            ("SSIM", lambda r: _num(".4f")(r["ssim"])),
            ("LPIPS", lambda r: _num(".4f")(r["lpips"])),
            ("rFID", lambda r: _num(".2f")(r["rfid"])),
            ("untrained PSNR", lambda r: _num(".2f")(r["initial_psnr"])),
        ]
        notes = [f"{k}: {v}" for k, v in result.get("unavailable", {}).items()]
        return [format_table(cols, rows), *notes]
    from stellar.eval.invariance import DISTANCES

    cols = [model] + [
        (name, lambda r, n=name: _num(".4f")((r["distances"].get(n) or {}).get("mean")))
        for name in DISTANCES
    ]
    tables = [
        "cosine distance, crop vs original (lower = more invariant)",
        format_table(cols, rows),
    ]
    eq_rows = [
        {"model": r["model"], "transform": t, **s}
        for r in rows
        for t, s in (r.get("equivariance") or {}).items()
    ]
    if eq_rows:
        share = ("l_share", "s_share", "cross_share", "relative_change")
        eq_cols = [model, ("transform", lambda r: r["transform"])] + [
            (s, lambda r, s=s: _num(".4f")(r.get(s))) for s in share
        ]
        tables += [
            "equivariance partition of dZ = dL.S1 + L1.dS + dL.dS",
            format_table(eq_cols, eq_rows),
        ]
    return tables


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def _out_dir(args: argparse.Namespace) -> Path:
    out = Path(args.out) if args.out else Path(f"eval-{args.protocol}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``stellar eval PROTOCOL``: compute, print the table, write ``OUT/metrics.json``."""
    _check_numbers(args)
    if args.baseline is not None:
        parse_baseline(args.baseline)  # a malformed spec or a missing file fails first
    result = _RUNNERS[args.protocol](args)
    out = _out_dir(args)
    settings = {k: v for k, v in vars(args).items() if k != "protocol"}
    payload = _jsonable({"protocol": args.protocol, "settings": settings, **result})
    tmp = out / (METRICS_NAME + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out / METRICS_NAME)
    # the table is the command's result on stdout (logging goes to stderr)
    print("\n".join(_tables(args.protocol, result)))
    logger.info("wrote %s", out / METRICS_NAME)
    return 0
