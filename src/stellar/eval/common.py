"""What every ``stellar eval`` protocol shares: the common options, the models of a run (STELLAR
and the optional baseline), input-folder checks, ``metrics.json`` and the result tables.

Each protocol module provides ``add_arguments(parser)``, ``run(args) -> result`` and
``tables(result) -> list[str]``; :mod:`stellar.eval.command` dispatches to them.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stellar.data.folder import ImageFolder
from stellar.errors import UsageError, nonneg_int, positive_int
from stellar.eval.baseline import load_baseline
from stellar.eval.encoder import Encoder
from stellar.outputs import atomic_write
from stellar.runtime import add_precision_argument, pick_device

METRICS_NAME = "metrics.json"


# ---------------------------------------------------------------------------- options
def add_encoding(p: argparse.ArgumentParser, num_workers: int = 0, batch_size: int = 64) -> None:
    """How the encoding commands (``eval``, ``extract``, ``viz``, ``retrieve``) read a model."""
    p.add_argument("--model", required=True, help="path, run folder, model name or org/name")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help="images per batch")
    p.add_argument("--num-workers", type=nonneg_int, default=num_workers, help="decoding workers")
    p.add_argument(
        "--resolution", type=positive_int, default=None, help="input side (default: native)"
    )
    add_precision_argument(p)


def add_common(p: argparse.ArgumentParser) -> None:
    """The options every protocol has."""
    add_encoding(p)
    p.add_argument(
        "--baseline", default=None, help="add a plain-ViT row: mae:PATH or vit:PATH (local files)"
    )
    p.add_argument("--out", default=None, help="output folder (default: eval-<protocol>)")
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the run (probe init and order, crops)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")


def add_keys(p: argparse.ArgumentParser, ours: Sequence[str]) -> None:
    """``--key``: the STELLAR feature a probe reads (default ``ours[0]``); a baseline row reads
    the same feature where a plain ViT has it (``cls``, ``dense``), else ``dense``."""
    p.add_argument("--key", choices=ours, default=ours[0], help="STELLAR feature the probe reads")


# ---------------------------------------------------------------------------- input folders
def check_folder(root: str | None, what: str) -> ImageFolder:
    """The images of a folder, scanned only (nothing decoded)."""
    if root is None or not Path(root).is_dir():
        got = "none" if root is None else repr(root)
        raise UsageError(f"expected {what} to be a folder of images, got {got}")
    return ImageFolder(root)  # a folder without images is its UsageError


# ---------------------------------------------------------------------------- models
@dataclass
class Entry:
    """One table row to compute: a model, its label, kind (stellar | baseline), feature, side."""

    name: str
    kind: str
    model: Encoder
    key: str | None
    resolution: int

    def row(self, **metrics: Any) -> dict[str, Any]:
        """The result row: ``model``, ``kind``, ``key`` and ``metrics``."""
        return {"model": self.name, "kind": self.kind, "key": self.key, **metrics}


def resolution(args: argparse.Namespace, model: Any) -> int:
    """``--resolution`` or the native input side of ``model.config`` (a model, or the
    :func:`~stellar.hub.inspect_model` of one), a multiple of its patch size."""
    encoder = model.config.encoder
    res = args.resolution or encoder.image_size
    if res % encoder.patch_size:
        raise UsageError(
            f"expected --resolution divisible by the patch size {encoder.patch_size}, got {res}"
        )
    return res


def load_entries(args: argparse.Namespace) -> list[Entry]:
    """The rows of a run: ``--model`` and ``--baseline``."""
    from stellar.hub import load_model

    device = pick_device(args.device)
    torch.manual_seed(args.seed)  # a random-init preset gets the same weights on every run
    model = load_model(args.model, purpose="encode", device=device)
    key = getattr(args, "key", None)
    entries = [Entry(str(args.model), "stellar", model, key, resolution(args, model))]
    if args.baseline is not None:
        base = load_baseline(args.baseline, device=device)
        base_key = key if key is None or key in base.feature_keys else "dense"
        entries.append(Entry(base.name, "baseline", base, base_key, resolution(args, base)))
    return entries


# ---------------------------------------------------------------------------- output
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


def write_json(path: Path, payload: Any) -> Path:
    """``payload`` as indented JSON (tensors as lists, NaN/inf as null), written atomically."""
    text = json.dumps(_jsonable(payload), indent=2)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def metric(fmt: str, scale: float = 1.0) -> Callable[[Any], str]:
    """A cell formatter for a number times ``scale`` ("n/a" for None / NaN)."""

    def cell(v: Any) -> str:
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        return "n/a" if missing else format(scale * v, fmt)

    return cell


percent = metric(".2f", 100)  # a fraction as a percentage


Column = tuple[str, Callable[[dict], str]]
MODEL: Column = ("model", lambda r: str(r["model"]))
KEY: Column = ("key", lambda r: str(r.get("key")))


def format_table(columns: Sequence[Column], rows: Sequence[dict]) -> str:
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
