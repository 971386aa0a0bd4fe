"""``stellar extract``: :func:`~stellar.eval.encoder.extract_features` written in resumable
shards (:mod:`stellar.eval.shards`), each written atomically, so a whole shard is done and a
rerun skips it. Under torchrun rank ``k`` of ``W`` takes the global shards ``k, k + W, ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from stellar.data.folder import EvalImages
from stellar.errors import Bounds, UsageError, number_type, positive_int
from stellar.eval.common import add_encoding, resolution, write_json
from stellar.eval.encoder import (
    FEATURE_KEYS,
    Encoder,
    check_keys,
    encode_batches,
    make_loader,
    weights_fingerprint,
)
from stellar.eval.shards import (
    META_NAME,
    differences,
    finalize_dir,
    read_meta,
    settings_id,
    shard_done,
    shard_name,
    write_shard,
)
from stellar.outputs import check_fresh, output_folder, remove
from stellar.progress import progress_bar
from stellar.runtime import encoding_dtype, precision_choice, setup, teardown

logger = logging.getLogger(__name__)

DEFAULT_KEYS: tuple[str, ...] = ("sparse", "cls", "spatial")  # what `stellar extract` keeps


# ---------------------------------------------------------------------------- sharded output
def _prepare_meta(out: Path, meta: dict[str, Any], overwrite: bool) -> None:
    """Start ``meta.json``, or resume an extraction of the same settings; another one is
    replaced only with ``overwrite``."""
    if (out / META_NAME).is_file():
        try:
            old = read_meta(out)
        except UsageError as err:
            what = f"a damaged extraction ({err})"
        else:
            if old["id"] == meta["id"]:  # the id hashes every recorded setting, retired ones too
                return
            diff = ", ".join(differences(old, meta)) or "recorded by another version"
            what = f"features extracted with other settings ({diff})"
    else:
        what = "shards of an unknown extraction"
    remove(check_fresh(out, (META_NAME, "shard-*.safetensors"), overwrite, what))
    write_json(out / META_NAME, {**meta, "count": None, "complete": False})


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
    overwrite: bool = False,
) -> list[int]:
    """Write this rank's shards (global shards ``rank::world_size``) of ``dataset`` to
    ``out_dir`` (held by rank 0) and return their ids, skipping whole ones; an extraction of
    other settings (the encoding precision included) is refused unless ``overwrite``."""
    keys = check_keys(keys)
    out = Path(out_dir)
    holding = (
        output_folder(out, "stellar extract", inputs=[dataset.root])
        if rank == 0
        else contextlib.nullcontext()
    )
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
            "precision": "bf16" if encoding_dtype(model.device) else "fp32",
            "shard_size": shard_size,
            "num_files": len(dataset),
            "files": dataset.files_id,
            "num_shards": len(shards),
            "classes": list(dataset.classes),
        }
        meta = {**settings, "id": settings_id(settings)}
        if rank == 0:
            _prepare_meta(out, meta, overwrite)
        distributed = world_size > 1 and torch.distributed.is_initialized()
        if distributed:
            torch.distributed.barrier()  # no rank writes before rank 0 has checked the folder
        mine = list(range(len(shards)))[rank::world_size]
        todo = [g for g in mine if not shard_done(out / shard_name(g), g, meta)]
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
                out_g = encode_batches(model, batches, keys, fp16)
                write_shard(out / shard_name(g), g, shards[g], out_g, keys, meta["id"])
        if distributed:
            torch.distributed.barrier()  # every rank's shards are written
        if rank == 0 or not distributed:
            finalize_dir(out)  # complete once every shard exists
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


# ---------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_encoding(parser, num_workers=4)
    parser.add_argument("--data", required=True, help="image folder (sub-folders = labels) or file")
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
    parser.add_argument("--shard-size", type=positive_int, default=1024, help="images per shard")
    parser.add_argument(
        "--resize-ratio",
        type=number_type(float, Bounds(low=1)),
        default=256 / 224,
        help="shorter side / crop (default: 256/224 = %(default).4f)",
    )
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
            dataset = EvalImages(args.data, resolution(args, model), args.resize_ratio)
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
                rank=info.rank,
                world_size=info.world_size,
                model_spec=str(args.model),
                progress=info.is_main,
                overwrite=args.overwrite,
            )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"interrupted; the finished shards in {args.out} are kept: run the same command to "
            "resume"
        ) from None
    finally:
        teardown()
    return 0
