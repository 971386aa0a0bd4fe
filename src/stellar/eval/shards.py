"""A ``stellar extract`` folder: its layout, and reading it back whole or not at all.

- ``shard-00000.safetensors`` ...: dataset images ``[g * shard_size, (g + 1) * shard_size)``
  of global shard ``g``; one tensor per requested key with one row per decoded image (the
  model's per-image shape), plus ``index`` and ``label`` (int64); the paths, the shard number
  and the extraction's settings id in the metadata.
- ``meta.json``: the settings (model spec, a fingerprint of its weights, keys, preprocessing,
  ...), their id, ``count`` and ``complete``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from stellar.errors import UsageError
from stellar.eval.common import write_json
from stellar.eval.encoder import check_keys
from stellar.outputs import atomic_write

logger = logging.getLogger(__name__)

META_NAME = "meta.json"
NOT_SETTINGS = ("count", "complete", "id", "model")


def shard_name(shard: int) -> str:
    """File name of global shard ``shard``."""
    return f"shard-{shard:05d}.safetensors"


def settings_id(meta: dict[str, Any]) -> str:
    """A hash of the settings in ``meta`` (not the ``model`` as it was spelled: its weights are
    the ``weights`` fingerprint), in ``meta.json`` and in every shard."""
    settings = {k: v for k, v in meta.items() if k not in NOT_SETTINGS}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def differences(recorded: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """``key recorded (this run: expected)`` for each setting recorded otherwise (the file and
    class lists by name only)."""
    return [
        f"{k} differ" if k in ("files", "classes") else f"{k} {recorded.get(k)!r} (this run: {v!r})"
        for k, v in expected.items()
        if recorded.get(k) != v and k not in NOT_SETTINGS
    ]


def read_meta(out: Path) -> dict[str, Any]:
    """``out/meta.json``, checked against the settings id it records."""
    path = out / META_NAME
    if not path.is_file():
        raise UsageError(f"expected a `stellar extract` folder with {META_NAME}, got {out}")
    try:
        meta = json.loads(path.read_text())
        valid = meta["id"] == settings_id(meta)
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise UsageError(
            f"{path} is damaged or was edited; extract again (--overwrite) to rebuild {out}"
        )
    return meta


def check_shard(path: Path, shard: int, meta: dict[str, Any]) -> int:
    """The number of images in shard ``shard`` at ``path``, checked to be this extraction's and
    whole (settings id, keys, one row per image, every file of its range a row or skipped)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            rows = {k: f.get_slice(k).get_shape()[:1] for k in f.keys()}  # noqa: SIM118
            index = f.get_tensor("index") if "index" in rows else None
            paths = json.loads(header.get("paths", "null"))
            skipped = json.loads(header.get("skipped", "null"))
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
        else "its rows and skipped files are not the files of its range"
        if not isinstance(skipped, list) or sorted(index.tolist() + skipped) != list(expected)
        else ""
    )
    if problem:
        raise UsageError(f"shard {path} is not shard {shard} of {path.parent}: {problem}")
    return len(paths)


def shard_done(path: Path, shard: int, meta: dict[str, Any]) -> bool:
    """Whether the shard is written and whole (a damaged one is extracted again)."""
    if not path.exists():
        return False
    try:
        check_shard(path, shard, meta)
    except UsageError as err:
        logger.warning("%s; extracting it again", err)
        return False
    return True


def write_shard(
    path: Path, shard: int, files: range, out: dict[str, Any], keys: list[str], settings_id: str
) -> None:
    """Shard ``shard`` of the dataset's ``files``: the rows ``out`` of :func:`encode_batches`
    and the files it skipped (an empty shard of broken files is still done)."""
    tensors = {k: out[k] if len(out[k]) else torch.empty(0) for k in keys}
    for name, stored in (("labels", "label"), ("indices", "index")):
        tensors[stored] = out[name] if len(out[name]) else torch.empty(0, dtype=torch.int64)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    skipped = sorted(set(files) - set(tensors["index"].tolist()))
    metadata = {
        "paths": json.dumps(out["paths"]),
        "skipped": json.dumps(skipped),
        "shard": str(shard),
        "settings": settings_id,
    }
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def finalize_dir(out: Path) -> None:
    """Mark ``out`` complete in ``meta.json`` if every shard is written; delete an extraction
    in which no image decoded (there is nothing to resume)."""
    meta = read_meta(out)
    shards = [out / shard_name(g) for g in range(meta["num_shards"])]
    missing = sum(not path.exists() for path in shards)
    if missing:
        logger.info("%d of %d shards not written yet (other ranks?)", missing, len(shards))
        return
    count = sum(check_shard(path, g, meta) for g, path in enumerate(shards))
    if not count:  # as extract_features: no features is not a result, nor one to resume
        for path in [out / META_NAME, *shards]:  # this job's own: deleted without a word
            path.unlink()
        raise UsageError(
            f"none of the {meta['num_files']} files decoded as an image (each named above): "
            "expected at least one decodable image"
        )
    write_json(out / META_NAME, {**meta, "count": count, "complete": True})
    logger.info("wrote %d images' features in %d shard(s) to %s", count, len(shards), out)


def load_features(
    out_dir: str | os.PathLike[str], keys: Sequence[str] | None = None
) -> dict[str, Any]:
    """A complete ``stellar extract`` folder in memory, every shard checked to belong to it and
    the image count to add up: what :func:`~stellar.eval.encoder.extract_features` returns,
    ``{key: (N, ...)}`` of ``keys`` (default: all stored), ``labels``, ``indices``, ``paths``.
    """
    out = Path(out_dir)
    meta = read_meta(out)
    if not meta.get("complete"):
        raise UsageError(
            f"{out} is an incomplete extraction (some shards are missing); run `stellar "
            "extract` again with the same arguments to finish it"
        )
    keys = list(meta["keys"]) if keys is None else check_keys(keys)
    absent = [k for k in keys if k not in meta["keys"]]
    if absent:
        raise UsageError(f"{out} stores keys {meta['keys']}, not {absent}")
    shards = [out / shard_name(g) for g in range(meta["num_shards"])]
    count = sum(check_shard(path, g, meta) for g, path in enumerate(shards))
    if count != meta["count"]:
        raise UsageError(
            f"{out} holds {count} images' features, but {META_NAME} counted {meta['count']}; "
            "extract again (--overwrite)"
        )
    parts: dict[str, list[Tensor]] = {k: [] for k in (*keys, "label", "index")}
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
    features["labels"], features["indices"] = features.pop("label"), features.pop("index")
    return {**features, "paths": paths, "classes": list(meta["classes"])}
