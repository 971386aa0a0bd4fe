"""The hub repository's layout: one ``config.json`` model table beside several weights files.

The released repository (``microsoft/STELLAR``) holds ``{"models": {"stellar-b16": {"weights":
"stellar-b16.safetensors", "num_sparse_tokens": 16, "num_decoder_layers": 6, "spatial_temp":
..., "backbone": "facebook/vit-mae-base"}, ...}}``. The entry whose ``weights`` is the file
being loaded is authoritative for its fields; the encoder comes from ``backbone``: a known id
maps to its configuration without network, a directory is read for its HF ViT
``config.json``. Everything is still checked against the tensor shapes, and a disagreement
is an error naming both values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from stellar.checkpoint.cache import find_released
from stellar.errors import UsageError
from stellar.models.config import EncoderConfig, StellarConfig
from stellar.models.infer import infer_config

logger = logging.getLogger(__name__)

TABLE_KEY = "models"
# The MAE initialisations the released models were trained from (their HF config.json).
KNOWN_BACKBONES: dict[str, EncoderConfig] = {
    "facebook/vit-mae-base": EncoderConfig(768, 12, 12, 3072, 224, 16),
    "facebook/vit-mae-large": EncoderConfig(1024, 24, 16, 4096, 224, 16),
    "facebook/vit-mae-huge": EncoderConfig(1280, 32, 16, 5120, 224, 14),
}
# Entry fields taken as they are (the rest of the config follows the weights' shapes).
_ENTRY_FIELDS = ("num_sparse_tokens", "num_decoder_layers", "spatial_temp")
# HF ViT config.json keys -> EncoderConfig fields (those without a default must be present).
_HF_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_HF_OPTIONAL = ("image_size", "patch_size", "num_channels", "layer_norm_eps", "qkv_bias")


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a ValueError naming the file when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON: {err}") from err


def is_model_table(data: Any) -> bool:
    """Whether a parsed ``config.json`` is the hub repository's model table."""
    return isinstance(data, dict) and isinstance(data.get(TABLE_KEY), dict)


def encoder_from_hf(data: Any, source: str) -> EncoderConfig:
    """The encoder configuration of an HF ViT / ViTMAE ``config.json``."""
    if not isinstance(data, dict):
        raise UsageError(f"{source} should hold a JSON object (an HF ViT config)")
    absent = [k for k in _HF_REQUIRED if k not in data]
    if absent:
        raise UsageError(f"{source} is not an HF ViT config: it lacks {', '.join(absent)}")
    act = data.get("hidden_act", "gelu")
    if act != "gelu":
        raise UsageError(f"{source}: hidden_act {act!r}, but the encoder uses exact 'gelu'")
    fields = {k: data[k] for k in _HF_REQUIRED + _HF_OPTIONAL if k in data}
    try:
        return EncoderConfig(**fields)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{source}: {err}") from None


def backbone_encoder(backbone: Any, table_dir: Path, allow_download: bool = True) -> EncoderConfig:
    """The encoder configuration named by a table entry's ``backbone``.

    A known id (``facebook/vit-mae-base``, ``-large``, ``-huge``) needs no file; a directory
    (relative to the table's folder, else to the working directory) is read for its
    ``config.json``; another ``org/name`` id is read from the Hugging Face cache (or fetched).
    """
    if not isinstance(backbone, str) or not backbone:
        raise UsageError(f"backbone must be an HF model id or a directory, got {backbone!r}")
    if backbone in KNOWN_BACKBONES:
        return KNOWN_BACKBONES[backbone]
    for folder in (table_dir / backbone, Path(backbone).expanduser()):
        if (folder / "config.json").is_file():
            return encoder_from_hf(read_json(folder / "config.json"), str(folder / "config.json"))
    if backbone.count("/") == 1 and not Path(backbone).exists():
        config = find_released(
            backbone,
            "config.json",
            f"the config of the backbone {backbone}",
            allow_download=allow_download,
        )
        return encoder_from_hf(read_json(config), str(config))
    raise UsageError(
        f"backbone {backbone!r} is neither a known id ({', '.join(KNOWN_BACKBONES)}) nor a "
        f"directory with an HF ViT config.json (looked in {table_dir / backbone} and "
        f"{Path(backbone).resolve()})"
    )


def table_entry(table: dict, weights: Path, source: Path) -> tuple[str, dict]:
    """The ``(name, entry)`` of the table whose ``weights`` is the file being loaded."""
    entries = table[TABLE_KEY]
    found = [
        (name, e)
        for name, e in entries.items()
        if isinstance(e, dict) and e.get("weights") == weights.name
    ]
    if not found:
        listed = ", ".join(
            f"{n} -> {e.get('weights') if isinstance(e, dict) else e!r}" for n, e in entries.items()
        )
        raise UsageError(
            f"{source} is a model table, but no entry has weights {weights.name!r} "
            f"(entries: {listed or 'none'}): load a file the table describes"
        )
    if len(found) > 1:
        raise UsageError(
            f"{source}: entries {', '.join(n for n, _ in found)} all name {weights.name!r}"
        )
    return found[0]


def table_config(
    table: dict,
    table_path: Path,
    weights: Path,
    shapes: dict[str, tuple[int, ...]],
    allow_download: bool = True,
) -> StellarConfig:
    """The config that the table's entry for ``weights`` describes, checked against ``shapes``.

    Raises:
        ValueError: no entry names the file, its backbone is unknown, or the entry and the
            tensor shapes disagree (both values named).
    """
    name, entry = table_entry(table, weights, table_path)
    where = f"{table_path} (entry {name!r})"
    if "backbone" not in entry:
        raise UsageError(f"{where} has no 'backbone': the encoder's configuration is unknown")
    encoder = backbone_encoder(entry["backbone"], table_path.parent, allow_download)
    meta = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    inferred = infer_config(meta, heads=encoder.num_attention_heads)
    found = {
        "backbone hidden_size": (encoder.hidden_size, inferred.encoder.hidden_size),
        "backbone num_hidden_layers": (
            encoder.num_hidden_layers,
            inferred.encoder.num_hidden_layers,
        ),
        "backbone intermediate_size": (
            encoder.intermediate_size,
            inferred.encoder.intermediate_size,
        ),
        "backbone patch_size": (encoder.patch_size, inferred.encoder.patch_size),
        "backbone image_size": (encoder.image_size, inferred.encoder.image_size),
        "num_sparse_tokens": (entry.get("num_sparse_tokens"), inferred.num_sparse_tokens),
    }
    if any(k.startswith("decoder.") for k in shapes):  # the depth is read from the file
        found["num_decoder_layers"] = (entry.get("num_decoder_layers"), inferred.num_decoder_layers)
    differ = [
        f"{field} {said} but the weights have {held}"
        for field, (said, held) in found.items()
        if said is not None and said != held
    ]
    if differ:
        raise UsageError(f"{where} contradicts the tensor shapes of {weights}: {'; '.join(differ)}")
    absent = [k for k in _ENTRY_FIELDS if k not in entry]
    if absent:
        logger.warning("%s does not give %s: taken from the weights / defaults", where, absent)
    changes = {k: entry[k] for k in _ENTRY_FIELDS if k in entry}
    encoder_dict = {**dataclasses.asdict(encoder), "qkv_bias": inferred.encoder.qkv_bias}
    try:
        config = inferred.replace(encoder=encoder_dict, **changes)
    except ValueError as err:
        raise UsageError(f"{where}: {err}") from None
    logger.info("%s: config from the model table and backbone %s", weights, entry["backbone"])
    return config
