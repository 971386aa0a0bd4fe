"""Initialise STELLAR's encoder from MAE weights (the paper starts from facebook/vit-mae-*).

Sources, all returned in :class:`~stellar.models.networks.ViTEncoder` naming: an HF model id
(``facebook/vit-mae-base``, through the Hugging Face cache), an HF model directory
(``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``) or one of its weights files,
of ``ViTMAEModel``, ``ViTMAEForPreTraining`` or ``ViTModel`` (keys under no prefix or ``vit.``;
transformers 4.x or 5.x block names); or the original facebookresearch/mae ``.pth``.

Fine-tuned classifiers are refused: a global-pool fine-tune replaces the per-token final norm
by ``fc_norm`` on the pooled token, which would silently change every output token.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stellar.checkpoint.official import from_official
from stellar.checkpoint.weights import (
    WeightsNotFoundError,
    hub_file,
    is_repo_id,
    listing,
    load_strict,
    read_json,
    read_state_dict,
)
from stellar.errors import UsageError
from stellar.layers.pos_embed import resize_patch_pos_embed

logger = logging.getLogger(__name__)

# Keys no encoder computation reads: beside the HF backbone, inside it, in the original .pth.
UNUSED_HF_TOP: tuple[str, ...] = ("decoder.",)
UNUSED_HF_BACKBONE: tuple[str, ...] = ("pooler.", "embeddings.mask_token")
UNUSED_ORIGINAL: tuple[str, ...] = ("decoder_", "mask_token")
# Keys only a fine-tuned classifier has.
FINETUNED_HF: tuple[str, ...] = ("classifier.",)
FINETUNED_ORIGINAL: tuple[str, ...] = ("fc_norm.", "head.")
HF_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")

_HF_PATCH_KEY = "embeddings.patch_embeddings.projection.weight"
_ORIGINAL_PATCH_KEY = "patch_embed.proj.weight"


@dataclass
class MaeWeights:
    """An MAE encoder read from the weights file ``path``: ``tensors`` in ViTEncoder naming,
    ``layout`` ``"hf"`` or ``"original"``, and the HF ``config`` beside them."""

    tensors: dict[str, Tensor]
    layout: str
    config: dict[str, Any] | None
    path: Path


def load_mae_weights(path: str | Path) -> MaeWeights:
    """The encoder tensors, layout and HF config of an MAE / HF ViT checkpoint (see above).

    Raises:
        FileNotFoundError: no such file, or a directory without HF weights.
        ValueError: an unrecognised layout, an unknown key, or a fine-tuned checkpoint.
    """
    spec, path = str(path), Path(path).expanduser()
    if is_repo_id(spec):
        hub_file(spec, "config.json", fetch=HF_WEIGHT_FILES[:1])  # an HF model id: its snapshot
        try:
            path = hub_file(spec, HF_WEIGHT_FILES[0])
        except FileNotFoundError:  # repositories from before safetensors hold only the pickle
            path = hub_file(spec, HF_WEIGHT_FILES[1])
    if path.is_dir():
        found = [path / name for name in HF_WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise WeightsNotFoundError(
                f"{path} holds none of {', '.join(HF_WEIGHT_FILES)}; pass an HF model "
                "directory, a weights file or an original MAE .pth"
            )
        path = found[0]
    # a weights file in its HF directory (as a directory's is): its config gives the head count
    config = _read_config(path.parent / "config.json") if path.name in HF_WEIGHT_FILES else None
    state = read_state_dict(path)[0]
    if _ORIGINAL_PATCH_KEY in state:
        return MaeWeights(_map_original(state, path), "original", config, path)
    return MaeWeights(_map_hf(state, path), "hf", config, path)


def init_encoder_from_mae(model: nn.Module, path: str | Path) -> None:
    """Load MAE weights into a STELLAR ``model.encoder`` strictly (every tensor replaced).

    Shapes must match the encoder (and the head count, when an HF ``config.json`` gives it);
    a different position grid (e.g. a 224 px MAE into a 64 px preset) is resized bicubically,
    the CLS entry kept.

    Raises:
        ValueError: the checkpoint cannot be read, or does not fit the encoder (naming the
            keys); the encoder is then untouched.
    """
    weights = load_mae_weights(path)
    tensors, enc = dict(weights.tensors), model.config.encoder
    heads = (weights.config or {}).get("num_attention_heads", enc.num_attention_heads)
    if heads != enc.num_attention_heads:
        raise UsageError(
            f"{weights.path}: MAE attention heads {heads}, but the model has "
            f"{enc.num_attention_heads}"
        )
    pos = tensors["pos_embed"]
    side = math.isqrt(pos.shape[1] - 1)
    grid = f"position grid {side}x{side}"
    if side != enc.grid_size:
        patches = resize_patch_pos_embed(pos[:, 1:], (enc.grid_size, enc.grid_size))
        tensors["pos_embed"] = torch.cat([pos[:, :1], patches.to(pos.dtype)], dim=1)
        grid += f" resized to {enc.grid_size}x{enc.grid_size}"
    source = f"the MAE encoder {weights.path}"
    load_strict(model.encoder, tensors, source=source, target="the model's encoder")
    logger.info("initialised the encoder from %s (%s layout, %s)", source, weights.layout, grid)


def _read_config(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    config = read_json(path)
    if not isinstance(config, dict):
        raise UsageError(f"{path} should hold a JSON object (an HF config)")
    if config.get("hidden_act", "gelu") != "gelu":
        raise UsageError(f"{path}: hidden_act {config['hidden_act']!r}, the encoder runs 'gelu'")
    return config


def _map_original(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Only the patch projection is named differently; blocks and qkv already match ours (any
    other key is refused by name when the tensors are loaded strictly)."""
    _refuse_finetuned([k for k in state if k.startswith(FINETUNED_ORIGINAL)], path)
    return {
        key.replace("patch_embed.proj.", "patch_embed.", 1): value
        for key, value in state.items()
        if not key.startswith(UNUSED_ORIGINAL)
    }


def _map_hf(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    prefixes = sorted({k[: -len(_HF_PATCH_KEY)] for k in state if k.endswith(_HF_PATCH_KEY)})
    if not prefixes:
        raise UsageError(
            f"{path} is neither an original MAE checkpoint (no {_ORIGINAL_PATCH_KEY!r}) nor an "
            f"HF ViT / ViTMAE one (no '[vit.]{_HF_PATCH_KEY}')"
        )
    if prefixes not in ([""], ["vit."]):
        raise UsageError(f"{path}: expected the HF ViT backbone under '' or 'vit.', not {prefixes}")
    prefix = prefixes[0]
    _refuse_finetuned([k for k in state if k.startswith(FINETUNED_HF)], path)
    backbone, unknown = {}, []
    for key, value in state.items():
        if key.startswith(UNUSED_HF_TOP):
            continue
        if not key.startswith(prefix):
            unknown.append(key)
        elif not key[len(prefix) :].startswith(UNUSED_HF_BACKBONE):
            backbone["encoder." + key[len(prefix) :]] = value
    # The official-layout mapper knows HF ViT 4.x and 5.x block names under "encoder.".
    mapped, not_mapped = from_official(backbone)
    unknown += [prefix + k.removeprefix("encoder.") for k in not_mapped]
    if unknown:
        raise UsageError(
            f"{path} has keys that are neither MAE encoder tensors nor on the known-unused list "
            f"(decoder, mask token, pooler): {listing(sorted(unknown))}"
        )
    return {k.removeprefix("encoder."): v for k, v in mapped.items()}


def _refuse_finetuned(found: list[str], path: Path) -> None:
    if found:
        raise UsageError(
            f"{path} looks like a fine-tuned classifier (keys {listing(sorted(found))}); "
            "expected an MAE pretraining checkpoint (facebook/vit-mae-* or "
            "mae_pretrain_vit_*.pth): a fine-tune's fc_norm was trained on the pooled token only"
        )
