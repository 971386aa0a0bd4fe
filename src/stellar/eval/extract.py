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
import contextlib
import hashlib
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
from stellar.outputs import atomic_write, check_fresh, output_folder, remove
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
def _settings_id(meta: dict[str, Any]) -> str:
    """A hash of the settings in ``meta`` (all but the progress fields), written in
    ``meta.json`` and in every shard: a shard is read only with the settings it was made with."""
    settings = {k: v for k, v in meta.items() if k not in ("count", "complete", "id")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def read_meta(out: Path) -> dict[str, Any]:
    """``out/meta.json``, checked against the settings id it records.

    Raises:
        UsageError: it is missing, not JSON, or edited since it was written.
    """
    path = out / META_NAME
    if not path.is_file():
        raise UsageError(f"expected a `stellar extract` folder with {META_NAME}, got {out}")
    try:
        meta = json.loads(path.read_text())
        valid = meta["id"] == _settings_id(meta)
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise UsageError(
            f"{path} is damaged or was edited; extract again (--overwrite) to rebuild {out}"
        )
    return meta


def _check_shard(path: Path, shard: int, meta: dict[str, Any]) -> int:
    """The number of images in the shard ``path`` after checking that it is shard ``shard`` of
    this extraction, whole: its settings id, keys, and one row per image in every tensor.

    Raises:
        UsageError: it is not (naming the file and what is wrong).
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            rows = {k: f.get_slice(k).get_shape()[:1] for k in f.keys()}  # noqa: SIM118
            index = f.get_tensor("index") if "index" in rows else None
            paths = json.loads(header.get("paths", "null"))
    except Exception as err:  # noqa: BLE001 - missing, truncated or not safetensors
        raise UsageError(f"shard {path} is unreadable ({err})") from None
    start = shard * meta["shard_size"]
    expected = range(start, min(start + meta["shard_size"], meta["num_files"]))
    problem = (
        "it was written by another extraction (other weights or settings)"
        if header.get("settings") != meta["id"] or header.get("shard") != str(shard)
        else f"it lacks {sorted({*meta['keys'], 'index', 'label'} - set(rows))}"
        if not {*meta["keys"], "index", "label"} <= set(rows)
        else "its tensors and paths disagree on the number of images"
        if not isinstance(paths, list) or any(r != [len(paths)] for r in rows.values())
        else "it holds images of another shard"
        if not set(index.tolist()) <= set(expected)
        else ""
    )
    if problem:
        raise UsageError(f"shard {path} is not shard {shard} of {path.parent}: {problem}")
    return len(paths)


def _shard_done(path: Path, shard: int, meta: dict[str, Any]) -> bool:
    """Whether the shard is written and whole (a damaged one is extracted again)."""
    if not path.exists():
        return False
    try:
        _check_shard(path, shard, meta)
    except UsageError as err:
        logger.warning("%s; extracting it again", err)
        return False
    return True


def _write_json(path: Path, payload: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))


def _prepare_meta(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Start ``meta.json``, or check that the extraction in ``out`` has the same ``settings``
    (it is then resumed); another one is replaced only with ``overwrite``."""
    if (out / META_NAME).is_file():
        try:
            old = read_meta(out)
        except UsageError as err:
            what = f"a damaged extraction ({err})"
        else:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            if not diff:
                return
            what = "features extracted with other settings ({})".format(
                ", ".join(f"{k}: {a!r} != {b!r}" for k, (a, b) in diff.items())
            )
    else:
        what = "shards of an unknown extraction"
    remove(check_fresh(out, (META_NAME, "shard-*.safetensors"), overwrite, what))
    meta = {**settings, "id": _settings_id(settings)}
    _write_json(out / META_NAME, {**meta, "count": None, "complete": False})


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
    overwrite: bool = False,
) -> list[int]:
    """Write this rank's shards of ``dataset`` to ``out_dir`` (see the module docstring).

    Args:
        model: a STELLAR model (its device is used).
        dataset: the images.
        out_dir: output folder (created; rank 0 holds it for the call).
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
        overwrite: replace an extraction with other settings in ``out_dir`` (without it, such
            a folder is refused; one with the same settings is resumed).

    Returns:
        The global ids of the shards written by this call (existing ones are skipped).
    """
    keys = check_keys(keys)
    out = Path(out_dir)
    holding = output_folder(out, "stellar extract") if rank == 0 else contextlib.nullcontext()
    with holding:
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
        meta = {**settings, "id": _settings_id(settings)}
        if rank == 0:
            _prepare_meta(out, settings, overwrite)
        if world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()  # no rank writes before rank 0 has checked the folder
        mine = list(range(len(shards)))[rank::world_size]
        todo = [g for g in mine if not _shard_done(out / shard_name(g), g, meta)]
        if len(mine) > len(todo):
            logger.info(
                "rank %d: %d shard(s) already complete, skipped", rank, len(mine) - len(todo)
            )
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
                _write_shard(out / shard_name(g), g, out_g, keys, meta["id"])
        if finalize:
            finalize_dir(out)
    return todo


def _counted(loader: Any, batch_size: int, total: int, bar: Any) -> Iterator[dict[str, Any]]:
    """The loader's batches, advancing ``bar`` by the files drawn (broken ones included)."""
    done = 0
    for batch in loader:
        now = min(loader.drawn * batch_size, total)
        bar.update(now - done)
        done = now
        yield batch
    bar.update(total - done)


def _write_shard(
    path: Path, shard: int, out: dict[str, Any], keys: list[str], settings_id: str
) -> None:
    """One shard file; every file of it broken gives an empty shard, which still marks it done."""
    tensors = {k: out[k] if len(out[k]) else torch.empty(0) for k in keys}
    for name, stored in (("labels", "label"), ("indices", "index")):
        tensors[stored] = out[name] if len(out[name]) else torch.empty(0, dtype=torch.int64)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {"paths": json.dumps(out["paths"]), "shard": str(shard), "settings": settings_id}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def finalize_dir(out_dir: str | os.PathLike[str]) -> bool:
    """Mark ``out_dir`` complete in ``meta.json`` if every shard is written; whether it is."""
    out = Path(out_dir)
    meta = read_meta(out)
    shards = [out / shard_name(g) for g in range(meta["num_shards"])]
    missing = sum(not path.exists() for path in shards)
    if missing:
        logger.info("%d of %d shards not written yet (other ranks?)", missing, len(shards))
        return False
    count = sum(_check_shard(path, g, meta) for g, path in enumerate(shards))
    _write_json(out / META_NAME, {**meta, "count": count, "complete": True})
    logger.info("wrote %d images' features in %d shards to %s", count, len(shards), out)
    return True


def load_features(
    out_dir: str | os.PathLike[str], keys: Sequence[str] | None = None
) -> tuple[dict[str, Tensor], Tensor, list[str]]:
    """Read a complete ``stellar extract`` folder back into memory, every shard checked to
    belong to it (:func:`_check_shard`) and the image count to add up.

    Args:
        out_dir: the folder.
        keys: keys to load (default: all stored).

    Returns:
        ``features`` ``{key: (N, ...)}`` in dataset order, ``labels`` (N,) int64 and the N
        image paths.

    Raises:
        UsageError: the folder is not a complete, whole extraction or lacks a requested key.
    """
    out = Path(out_dir)
    meta = read_meta(out)
    if not meta.get("complete"):
        raise UsageError(
            f"{out} is an incomplete extraction (some shards are missing); run `stellar "
            "extract` again with the same arguments to finish it"
        )
    keys = check_keys(keys) if keys is not None else list(meta["keys"])
    absent = [k for k in keys if k not in meta["keys"]]
    if absent:
        raise UsageError(f"{out} stores keys {meta['keys']}, not {absent}")
    shards = [out / shard_name(g) for g in range(meta["num_shards"])]
    count = sum(_check_shard(path, g, meta) for g, path in enumerate(shards))
    if count != meta["count"]:
        raise UsageError(
            f"{out} holds {count} images' features, but {META_NAME} counted {meta['count']}; "
            "extract again (--overwrite)"
        )
    parts: dict[str, list[Tensor]] = {k: [] for k in (*keys, "label")}
    paths: list[str] = []
    for path in shards:
        with safe_open(str(path), framework="pt") as f:
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
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the features of other settings in --out (same settings: resumed)",
    )
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
    """Run ``stellar extract``: rank 0 holds ``--out`` from before the model is read until
    every rank is done."""
    from stellar.hub import load_model

    info = setup(args.device)
    keys = check_keys(args.keys.split(","))
    try:
        with (
            output_folder(args.out, "stellar extract") if info.is_main else contextlib.nullcontext()
        ):
            torch.manual_seed(0)  # a random-init preset gets the same weights in every rank
            model = load_model(args.model, purpose="encode", device=info.device)
            logger.info("encoding precision: %s", precision_choice(args.precision, info.device)[1])
            if args.compile:  # the instance's forward_encode, which encode() calls
                model.forward_encode = torch.compile(model.forward_encode)
            resolution = args.resolution or model.config.encoder.image_size
            if resolution % model.patch_size:
                raise UsageError(
                    f"expected --resolution divisible by the patch size {model.patch_size}, "
                    f"got {resolution}"
                )
            dataset = EvalImages(args.data, resolution, resize_ratio=args.resize_ratio)
            logger.info("rank %d/%d: %r on %s", info.rank, info.world_size, dataset, info.device)
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
                rank=info.rank,
                world_size=info.world_size,
                model_spec=str(args.model),
                progress=info.is_main,
                finalize=not info.enabled,
                overwrite=args.overwrite,
            )
            if info.enabled:
                torch.distributed.barrier()
                if info.is_main:
                    finalize_dir(args.out)
                torch.distributed.barrier()
    finally:
        teardown()
    return 0
