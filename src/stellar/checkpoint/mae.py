"""Initialise STELLAR's encoder from MAE weights (the paper starts from facebook/vit-mae-*).

Accepted sources, all returned in :class:`~stellar.models.encoder.ViTEncoder` naming:

- a local HF model directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``,
  or a sharded ``*.index.json``) of ``ViTMAEModel``, ``ViTMAEForPreTraining`` (keys under
  ``vit.``) or ``ViTModel`` (no prefix, or ``vit.`` for the ``ViTFor*`` classes), with
  transformers 4.x (``encoder.layer.{i}.attention.attention.query``) or 5.x
  (``layers.{i}.attention.q_proj``) block names;
- such a weights file given directly;
- the original facebookresearch/mae ``.pth`` (a ``model`` dict with ``cls_token``,
  ``pos_embed``, ``patch_embed.proj``, ``blocks.{i}.*`` and ``norm``; the pretraining
  checkpoints also carry ``decoder_*`` and ``mask_token``).

The MAE decoder, its mask token and the HF pooler are dropped by name (the lists below); any
other key we do not recognise, or a missing encoder tensor, is an error. Fine-tuned classifier
checkpoints are refused rather than mapped: a global-pool MAE fine-tune replaces the per-token
final LayerNorm ``norm`` by ``fc_norm`` on the mean-pooled token, so using it as STELLAR's
per-token norm would silently change what every output token means.

MAE's position embeddings are fixed 2-D sin-cos tables stored in the state dict; ours are
learnable, so the table simply becomes their initial value.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from stellar.checkpoint.cache import find_model_dir
from stellar.checkpoint.official import from_official
from stellar.checkpoint.weights import WeightsNotFoundError, listing, load_strict, read_state_dict
from stellar.errors import UsageError
from stellar.layers.pos_embed import resize_patch_pos_embed

if TYPE_CHECKING:
    from stellar.models.stellar import STELLAR

logger = logging.getLogger(__name__)

# Key prefixes no encoder computation reads, per layout (HF ones relative to the backbone
# prefix, except ``decoder.`` which sits beside ``vit.`` in ViTMAEForPreTraining and
# ViTForMaskedImageModeling).
KNOWN_UNUSED_HF_TOP: tuple[str, ...] = ("decoder.",)
KNOWN_UNUSED_HF_BACKBONE: tuple[str, ...] = ("pooler.", "embeddings.mask_token")
KNOWN_UNUSED_ORIGINAL: tuple[str, ...] = ("decoder_", "mask_token")
# Keys that only a fine-tuned classifier has.
FINETUNED_HF: tuple[str, ...] = ("classifier.",)
FINETUNED_ORIGINAL: tuple[str, ...] = ("fc_norm.", "head.")

HF_PREFIXES: tuple[str, ...] = ("", "vit.")
HF_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES: tuple[str, ...] = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HF_CONFIG = "config.json"

_HF_PATCH_KEY = "embeddings.patch_embeddings.projection.weight"
_ORIGINAL_PATCH_KEY = "patch_embed.proj.weight"
_GLOBAL_KEYS: tuple[str, ...] = (
    "cls_token",
    "pos_embed",
    "patch_embed.weight",
    "patch_embed.bias",
    "norm.weight",
    "norm.bias",
)
_BLOCK_MODULES: tuple[str, ...] = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")


@dataclass
class MaeWeights:
    """An MAE encoder read from disk.

    Attributes:
        tensors: encoder tensors in ViTEncoder naming.
        layout: ``"hf"`` or ``"original"``.
        unused: source keys dropped as known-unused (decoder, mask token, pooler).
        config: the HF ``config.json`` beside the weights, when there is one.
        path: where they were read (an HF model id resolved to its cached snapshot).
    """

    tensors: dict[str, Tensor]
    layout: str
    unused: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None
    path: Path | None = None


def read_mae_encoder(path: str | Path) -> dict[str, Tensor]:
    """Read the encoder of an MAE / HF ViT checkpoint in :class:`ViTEncoder` naming.

    Args:
        path: an HF model directory, one of its weights files, or an original MAE ``.pth``.

    Returns:
        ``cls_token`` (1, 1, d), ``pos_embed`` (1, 1 + g*g, d), ``patch_embed.weight``
        (d, C, p, p) and ``.bias``, ``blocks.{i}.*`` (``attn.qkv`` fused q, k, v: (3d, d)) and
        ``norm.*``.

    Raises:
        FileNotFoundError: no such file, or a directory without HF weights.
        ValueError: an unrecognised layout, unknown or missing keys, or a fine-tuned checkpoint.
    """
    return load_mae_weights(path).tensors


def resolve_mae(spec: str | Path, download: bool = True) -> Path:
    """The MAE checkpoint ``spec`` names: an existing path, or an HF model id.

    An id such as ``facebook/vit-mae-base`` is the snapshot folder of that repository in the
    Hugging Face cache (``config.json`` and its weights), fetched when missing and allowed
    (:func:`stellar.checkpoint.cache.find_model_dir`).
    """
    path = Path(spec).expanduser()
    if path.exists() or str(spec).count("/") != 1 or str(spec).startswith((".", "/", "~")):
        return path
    return find_model_dir(str(spec), HF_WEIGHT_FILES, f"the MAE weights {spec}", download)


def load_mae_weights(path: str | Path, download: bool = True) -> MaeWeights:
    """:func:`read_mae_encoder` plus the layout, the dropped keys and the HF config.

    ``path`` may also be an HF model id (``facebook/vit-mae-base``): see :func:`resolve_mae`.
    """
    path = resolve_mae(path, download)
    state, config = _read_files(path)
    if _ORIGINAL_PATCH_KEY in state:
        tensors, unused = _map_original(state, path)
        layout = "original"
    else:
        tensors, unused = _map_hf(state, path)
        layout = "hf"
    _check_complete(tensors, path)
    return MaeWeights(tensors, layout, unused, config, path)


def init_encoder_from_mae(model: STELLAR, path: str | Path, download: bool = True) -> None:
    """Load MAE weights into ``model.encoder`` strictly (every encoder tensor replaced).

    Width, depth, MLP width, patch size and channels must match the model (and the attention
    heads, when an HF ``config.json`` says how many). When the position grid differs (e.g. a
    224-px MAE into a 64-px preset with the same patch size) the patch position embeddings are
    resized bicubically to the model's grid and the CLS one is kept.

    Args:
        model: the STELLAR model whose encoder is overwritten in place.
        path: see :func:`read_mae_encoder`, or an HF model id (``facebook/vit-mae-base``).
        download: False never fetches an id that is not cached (see :func:`resolve_mae`).

    Raises:
        ValueError: the checkpoint cannot be read (see :func:`read_mae_encoder`) or its
            architecture differs from the model's.
    """
    weights = load_mae_weights(path, download)
    path = weights.path
    tensors = dict(weights.tensors)
    enc_cfg = model.config.encoder
    _check_architecture(model, tensors, weights.config, path)

    pos = tensors["pos_embed"]
    source_n = pos.shape[1] - 1
    target_grid = (enc_cfg.grid_size, enc_cfg.grid_size)
    source_side = math.isqrt(source_n)
    if source_n != target_grid[0] * target_grid[1]:
        patch_pos = resize_patch_pos_embed(pos[:, 1:], target_grid)
        tensors["pos_embed"] = torch.cat([pos[:, :1], patch_pos.to(pos.dtype)], dim=1)
        grid_note = f"position grid {source_side}x{source_side} resized to {target_grid}"
    else:
        grid_note = f"position grid {source_side}x{source_side}"

    load_strict(
        model.encoder, tensors, source=f"the MAE encoder {path}", target="the model's encoder"
    )
    depth = len(model.encoder.blocks)
    logger.info(
        "initialised the encoder from MAE weights %s (%s layout): %d tensors, width %d, "
        "%d blocks, patch %d, %s; dropped %d unused tensors (decoder / mask token / pooler)",
        path,
        weights.layout,
        len(tensors),
        enc_cfg.hidden_size,
        depth,
        enc_cfg.patch_size,
        grid_note,
        len(weights.unused),
    )


# ---------------------------------------------------------------------- reading files
def _read_files(path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    if path.is_dir():
        config = _read_config(path / HF_CONFIG)
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                return read_state_dict(path / name)[0], config
        for name in HF_INDEX_FILES:
            if (path / name).is_file():
                return _read_sharded(path / name), config
        raise WeightsNotFoundError(
            f"{path} holds none of {', '.join(HF_WEIGHT_FILES + HF_INDEX_FILES)}; pass an HF "
            "model directory, a weights file or an original MAE .pth"
        )
    if not path.is_file():
        raise WeightsNotFoundError(f"no MAE checkpoint at {path}")
    # A weights file still sitting in its HF directory: its config lets us check the heads.
    config = _read_config(path.parent / HF_CONFIG) if path.name in HF_WEIGHT_FILES else None
    return read_state_dict(path)[0], config


def _read_config(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise UsageError(f"{path} should hold a JSON object (an HF config)")
    return config


def _read_sharded(index_path: Path) -> dict[str, Tensor]:
    index = _read_config(index_path) or {}
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise UsageError(f"{index_path} has no 'weight_map' object")
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(read_state_dict(index_path.parent / shard)[0])
    return state


# ---------------------------------------------------------------------- key mapping
def _map_original(state: dict[str, Tensor], path: Path) -> tuple[dict[str, Tensor], list[str]]:
    _refuse_finetuned(sorted(k for k in state if k.startswith(FINETUNED_ORIGINAL)), path)
    tensors: dict[str, Tensor] = {}
    unused: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith(KNOWN_UNUSED_ORIGINAL):
            unused.append(key)
            continue
        # Only the patch projection is named differently; blocks and qkv already match ours.
        new = key.replace("patch_embed.proj.", "patch_embed.", 1)
        if _is_encoder_key(new):
            tensors[new] = value
        else:
            unknown.append(key)
    _refuse_unknown(unknown, path)
    return tensors, unused


def _map_hf(state: dict[str, Tensor], path: Path) -> tuple[dict[str, Tensor], list[str]]:
    prefixes = sorted({k[: -len(_HF_PATCH_KEY)] for k in state if k.endswith(_HF_PATCH_KEY)})
    if not prefixes:
        raise UsageError(
            f"{path} is neither an original MAE checkpoint (no {_ORIGINAL_PATCH_KEY!r}) nor an "
            f"HF ViT / ViTMAE one (no '[vit.]{_HF_PATCH_KEY}')"
        )
    if len(prefixes) > 1 or prefixes[0] not in HF_PREFIXES:
        raise UsageError(
            f"{path}: expected the HF ViT backbone under no prefix or 'vit.', found it under "
            f"{prefixes}"
        )
    prefix = prefixes[0]
    backbone: dict[str, Tensor] = {}
    unused: list[str] = []
    unknown: list[str] = []
    finetuned: list[str] = []
    for key, value in state.items():
        if key.startswith(KNOWN_UNUSED_HF_TOP):
            unused.append(key)
        elif key.startswith(FINETUNED_HF):
            finetuned.append(key)
        elif not key.startswith(prefix):
            unknown.append(key)
        elif key[len(prefix) :].startswith(KNOWN_UNUSED_HF_BACKBONE):
            unused.append(key)
        else:
            backbone["encoder." + key[len(prefix) :]] = value
    _refuse_finetuned(finetuned, path)
    # The official-layout mapper already knows HF ViT 4.x and 5.x names under "encoder.".
    mapped, also_unused, not_mapped = from_official(backbone)
    unused += [prefix + k.removeprefix("encoder.") for k in also_unused]
    unknown += [prefix + k.removeprefix("encoder.") for k in not_mapped]
    tensors = {}
    for key, value in mapped.items():
        inner = key.removeprefix("encoder.")
        if key.startswith("encoder.") and _is_encoder_key(inner):
            tensors[inner] = value
        else:
            unknown.append(prefix + inner)
    _refuse_unknown(unknown, path)
    return tensors, unused


def _is_encoder_key(key: str) -> bool:
    if key in _GLOBAL_KEYS:
        return True
    m = _BLOCK_KEY.match(key)
    return bool(m) and m.group(2) in _BLOCK_MODULES


def _refuse_finetuned(found: list[str], path: Path) -> None:
    if found:
        raise UsageError(
            f"{path} looks like a fine-tuned classifier (keys {listing(sorted(found))}); "
            "expected an MAE pretraining checkpoint (facebook/vit-mae-* or "
            "mae_pretrain_vit_*.pth). Fine-tuned heads are not mapped: a global-pool fine-tune "
            "has no per-token final norm, and its fc_norm was trained on the pooled token only"
        )


def _refuse_unknown(unknown: list[str], path: Path) -> None:
    if unknown:
        raise UsageError(
            f"{path} has keys that are neither MAE encoder tensors nor on the known-unused list "
            f"(decoder, mask token, pooler): {listing(sorted(unknown))}"
        )


def _check_complete(tensors: dict[str, Tensor], path: Path) -> None:
    indices = {int(m.group(1)) for k in tensors if (m := _BLOCK_KEY.match(k))}
    depth = max(indices) + 1 if indices else 1
    expected = list(_GLOBAL_KEYS) + [
        f"blocks.{i}.{module}.{kind}"
        for i in range(depth)
        for module in _BLOCK_MODULES
        for kind in ("weight", "bias")
    ]
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise UsageError(f"{path} lacks MAE encoder tensors (ViTEncoder names): {listing(missing)}")


# ---------------------------------------------------------------------- architecture checks
def _check_architecture(
    model: STELLAR, tensors: dict[str, Tensor], config: dict[str, Any] | None, path: Path
) -> None:
    cfg = model.config.encoder
    patch = tensors["patch_embed.weight"]
    depth = 1 + max(int(m.group(1)) for k in tensors if (m := _BLOCK_KEY.match(k)))
    found = {
        "width": (patch.shape[0], cfg.hidden_size),
        "depth": (depth, cfg.num_hidden_layers),
        "patch size": (tuple(patch.shape[2:]), (cfg.patch_size, cfg.patch_size)),
        "input channels": (patch.shape[1], cfg.num_channels),
        "MLP width": (tensors["blocks.0.mlp.fc1.weight"].shape[0], cfg.intermediate_size),
    }
    if config is not None and "num_attention_heads" in config:
        found["attention heads"] = (config["num_attention_heads"], cfg.num_attention_heads)
    problems = [
        f"MAE width {theirs} but the model is {ours} wide"
        if what == "width"
        else f"MAE {what} {theirs} but the model has {ours}"
        for what, (theirs, ours) in found.items()
        if theirs != ours
    ]
    if config is not None and config.get("hidden_act", "gelu") != "gelu":
        problems.append(f"MAE hidden_act {config['hidden_act']!r} but the model uses exact 'gelu'")
    if problems:
        raise UsageError(f"{path} does not fit the model's encoder: " + "; ".join(problems))
    if config is None:
        logger.info("%s has no config.json: the attention-head count cannot be checked", path)
    elif float(config.get("layer_norm_eps", cfg.layer_norm_eps)) != cfg.layer_norm_eps:
        logger.warning(
            "%s was configured with layer_norm_eps %s, the model uses %s",
            path,
            config["layer_norm_eps"],
            cfg.layer_norm_eps,
        )
