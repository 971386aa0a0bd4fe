"""``stellar extract``: :func:`~stellar.eval.encoder.extract_features` written in resumable
shards.

Layout of ``OUT``:

- ``shard-00000.safetensors`` ...: dataset images ``[g * shard_size, (g + 1) * shard_size)``
  of global shard ``g``; one tensor per requested key with one row per decoded image (the
  model's per-image shape), plus ``index`` and ``label`` (int64), the paths in the metadata.
- ``meta.json``: the settings (model spec, a fingerprint of its weights, keys, preprocessing,
  ...), ``count`` and ``complete``. A rerun resumes only onto a folder with the same settings.

Under torchrun rank ``k`` of ``W`` takes the global shards ``k, k + W, ...``. Each shard is
written atomically, so an existing shard is complete and a rerun skips it; the final
``meta.json`` is written once every shard exists.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Subset

from stellar.checkpoint.io import atomic_write
from stellar.data.folder import EvalImages
from stellar.errors import UsageError, nonneg_int, positive_int
from stellar.eval.encoder import (
    FEATURE_KEYS,
    Encoder,
    check_keys,
    encode_batches,
    make_loader,
    weights_fingerprint,
)
from stellar.progress import progress_bar
from stellar.runtime import (
    add_precision_argument,
    encoding_dtype,
    precision_choice,
    setup,
    teardown,
)

__all__ = [
    "add_arguments",
    "extract_to_dir",
    "load_features",
    "run",
]

logger = logging.getLogger(__name__)

META_NAME = "meta.json"
DEFAULT_KEYS: tuple[str, ...] = ("sparse", "cls", "spatial")  # what `stellar extract` keeps


def shard_name(shard: int) -> str:
    """File name of global shard ``shard``."""
    return f"shard-{shard:05d}.safetensors"


# ---------------------------------------------------------------------------- sharded output
def _shard_complete(path: Path, keys: Sequence[str]) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            present = set(f.keys())
    except Exception:  # noqa: BLE001 - an unreadable shard is redone, not fatal
        logger.warning("shard %s is unreadable; extracting it again", path)
        return False
    return present >= {*keys, "index", "label"}


def _write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))


def _prepare_meta(out_dir: Path, settings: dict[str, Any]) -> None:
    """Start ``meta.json``, or check that an existing one has the same ``settings``."""
    meta_path = out_dir / META_NAME
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise UsageError(
                f"{out_dir} holds features extracted with other settings "
                f"({', '.join(f'{k}: {a!r} != {b!r}' for k, (a, b) in diff.items())}); "
                "expected the same settings to resume: use another --out folder"
            )
        return
    _write_json(meta_path, {**settings, "count": None, "complete": False})


def extract_to_dir(
    model: Encoder,
    dataset: EvalImages,
    out_dir: str | os.PathLike[str],
    keys: Sequence[str] = DEFAULT_KEYS,
    shard_size: int = 1024,
    batch_size: int = 64,
    num_workers: int = 0,
    fp16: bool = False,
    rank: int = 0,
    world_size: int = 1,
    model_spec: str = "",
    progress: bool = True,
    finalize: bool = True,
    precision: str = "auto",
) -> list[int]:
    """Write this rank's shards of ``dataset`` to ``out_dir`` (see the module docstring).

    Args:
        model: a STELLAR model (its device is used).
        dataset: the images.
        out_dir: output folder (created).
        keys: outputs of ``model.encode`` to store.
        shard_size: images per shard.
        batch_size, num_workers: loader settings.
        fp16: store floating features as float16.
        rank, world_size: this process takes global shards ``rank::world_size``.
        model_spec: recorded in ``meta.json``.
        progress: show a progress bar (tqdm on a terminal, log lines in a pipe).
        finalize: mark the folder complete when every shard exists.
        precision: the encoding's autocast (``auto``, ``bf16``, ``fp32``); the dtype it
            resolves to is recorded, and a resume must resolve to the same.

    Returns:
        The global ids of the shards written by this call (existing ones are skipped).
    """
    keys = check_keys(keys)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    shards = [range(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
    settings = {
        "model": model_spec,
        "weights": weights_fingerprint(model),
        "keys": keys,
        "resolution": dataset.resolution,
        "resize_ratio": dataset.resize_ratio,
        "crop": dataset.crop,
        "fp16": bool(fp16),
        "precision": "bf16" if encoding_dtype(model.device, precision) else "fp32",
        "shard_size": shard_size,
        "num_files": len(dataset),
        "num_shards": len(shards),
        "classes": list(dataset.classes),
    }
    _prepare_meta(out, settings)

    mine = list(range(len(shards)))[rank::world_size]
    todo = [g for g in mine if not _shard_complete(out / shard_name(g), keys)]
    skipped = len(mine) - len(todo)
    if skipped:
        logger.info("rank %d: %d shard(s) already complete, skipped", rank, skipped)
    written = []
    bar = progress_bar(
        total=sum(len(shards[g]) for g in todo),
        desc=f"extract[{rank}]" if world_size > 1 else "extract",
        unit="img",
        disable=not progress,
        position=rank if world_size > 1 else None,
    )
    with bar:
        for g in todo:
            subset = Subset(dataset, shards[g])
            loader = make_loader(subset, batch_size, num_workers, model.device.type == "cuda")
            batches = _counted(loader, batch_size, len(subset), bar)
            out_g = encode_batches(model, batches, keys, fp16, precision)
            _write_shard(out / shard_name(g), g, out_g, keys)
            written.append(g)
    if finalize:
        finalize_dir(out)
    return written


def _counted(loader: Any, batch_size: int, total: int, bar: Any) -> Iterator[dict[str, Any]]:
    """The loader's batches, advancing ``bar`` by the files drawn (broken ones included)."""
    done = 0
    for batch in loader:
        now = min(loader.drawn * batch_size, total)
        bar.update(now - done)
        done = now
        yield batch
    bar.update(total - done)


def _write_shard(path: Path, shard: int, out: dict[str, Any], keys: list[str]) -> None:
    """One shard file; every file of it broken gives an empty shard, which still marks it done."""
    tensors = {k: out[k] if len(out[k]) else torch.empty(0) for k in keys}
    for name, stored in (("labels", "label"), ("indices", "index")):
        tensors[stored] = out[name] if len(out[name]) else torch.empty(0, dtype=torch.int64)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {"paths": json.dumps(out["paths"]), "shard": str(shard)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def finalize_dir(out_dir: str | os.PathLike[str]) -> bool:
    """Mark ``out_dir`` complete in ``meta.json`` if every shard exists; whether it is."""
    out = Path(out_dir)
    meta = json.loads((out / META_NAME).read_text())
    shards = [out / shard_name(g) for g in range(meta["num_shards"])]
    missing = sum(not _shard_complete(path, meta["keys"]) for path in shards)
    if missing:
        logger.info("%d of %d shards not written yet (other ranks?)", missing, len(shards))
        return False
    count = 0
    for path in shards:
        with safe_open(str(path), framework="pt") as f:
            count += f.get_slice("index").get_shape()[0]
    _write_json(out / META_NAME, {**meta, "count": count, "complete": True})
    logger.info("wrote %d images' features in %d shards to %s", count, len(shards), out)
    return True


def load_features(
    out_dir: str | os.PathLike[str], keys: Sequence[str] | None = None
) -> tuple[dict[str, Tensor], Tensor, list[str]]:
    """Read a complete ``stellar extract`` folder back into memory.

    Args:
        out_dir: the folder.
        keys: keys to load (default: all stored).

    Returns:
        ``features`` ``{key: (N, ...)}`` in dataset order, ``labels`` (N,) int64 and the N
        image paths.

    Raises:
        ValueError: the folder is not a complete extraction or lacks a requested key.
    """
    out = Path(out_dir)
    meta_path = out / META_NAME
    if not meta_path.is_file():
        raise UsageError(f"expected a `stellar extract` folder with {META_NAME}, got {out}")
    meta = json.loads(meta_path.read_text())
    if not meta.get("complete"):
        raise UsageError(
            f"{out} is an incomplete extraction (some shards are missing); run `stellar "
            "extract` again with the same arguments to finish it"
        )
    keys = check_keys(keys) if keys is not None else list(meta["keys"])
    absent = [k for k in keys if k not in meta["keys"]]
    if absent:
        raise UsageError(f"{out} stores keys {meta['keys']}, not {absent}")
    parts: dict[str, list[Tensor]] = {k: [] for k in (*keys, "label")}
    paths: list[str] = []
    for g in range(meta["num_shards"]):
        with safe_open(str(out / shard_name(g)), framework="pt") as f:
            for k in parts:
                parts[k].append(f.get_tensor(k))
            paths.extend(json.loads(f.metadata()["paths"]))
    features = {k: torch.cat([t for t in v if t.numel()] or v) for k, v in parts.items()}
    bad = [k for k, v in features.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise UsageError(
            f"{out} stores non-finite {', '.join(bad)} features (NaN or inf): expected finite "
            "features; were they extracted from diverged weights?"
        )
    labels = features.pop("label").long()
    return features, labels, paths


# ---------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stellar extract``."""
    parser.add_argument("--model", required=True, help="checkpoint path, run dir or model name")
    parser.add_argument("--data", required=True, help="image folder (class sub-folders = labels)")
    parser.add_argument("--out", required=True, help="output folder for shards + index")
    parser.add_argument(
        "--keys",
        default=",".join(DEFAULT_KEYS),
        help=f"comma-separated outputs to store, among {','.join(FEATURE_KEYS)}",
    )
    parser.add_argument("--fp16", action="store_true", help="store features as float16")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--num-workers", type=nonneg_int, default=4)
    parser.add_argument("--shard-size", type=positive_int, default=1024, help="images per shard")
    parser.add_argument(
        "--resolution", type=positive_int, default=None, help="crop size (default: native)"
    )
    parser.add_argument(
        "--resize-ratio", type=float, default=256 / 224, help="shorter side / crop (256/224)"
    )
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    add_precision_argument(parser)
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the encoder forward (GPU)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``stellar extract``."""
    from stellar.eval.common import writable_folder
    from stellar.hub import load_model

    info = setup(args.device)
    rank, world, device = info.rank, info.world_size, info.device
    writable_folder(args.out)  # before the model or any image is read
    keys = check_keys(args.keys.split(","))
    torch.manual_seed(0)  # a random-init preset gets the same weights in every rank and run
    model = load_model(args.model, purpose="encode", device=device)
    logger.info("encoding precision: %s", precision_choice(args.precision, device)[1])
    if args.compile:  # the instance's forward_encode, which encode() calls after its checks
        model.forward_encode = torch.compile(model.forward_encode)
    resolution = args.resolution or model.config.encoder.image_size
    if resolution % model.patch_size:
        raise UsageError(
            f"expected --resolution divisible by the patch size {model.patch_size}, "
            f"got {resolution}"
        )
    dataset = EvalImages(args.data, resolution, resize_ratio=args.resize_ratio)
    logger.info("rank %d/%d: %r on %s", rank, world, dataset, device)
    try:
        extract_to_dir(
            model,
            dataset,
            args.out,
            keys=keys,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            fp16=args.fp16,
            precision=args.precision,
            rank=rank,
            world_size=world,
            model_spec=str(args.model),
            progress=rank == 0,
            finalize=world == 1,
        )
        if info.enabled:
            torch.distributed.barrier()
            if info.is_main:
                finalize_dir(args.out)
            torch.distributed.barrier()
    finally:
        teardown()
    return 0
