"""Translate between our parameter names and the official checkpoint layout.

The official model's encoder and decoder are HF ``ViTModel`` instances, so their keys follow
transformers 4.x (``encoder.encoder.layer.{i}.attention.attention.query``) or 5.x
(``encoder.layers.{i}.attention.q_proj``). We fuse q, k and v into one ``qkv`` projection and
give modules names that read like the method; this module is the only place that knows both,
and :func:`load_official` loads the official layout into a model strictly.
"""

from __future__ import annotations

import logging
import re

import torch
from torch import Tensor, nn

from stellar.checkpoint.weights import check_state

logger = logging.getLogger(__name__)

# Official keys that exist in released checkpoints but that no STELLAR computation reads.
KNOWN_UNUSED_PREFIXES: tuple[str, ...] = (
    "encoder.pooler.",  # HF ViTModel pooler, never called
    "decoder.pooler.",
    "decoder.embeddings.",  # the decoder ViT's own patch/CLS/position embeddings, bypassed
)

# The model's parts that only some purposes build -> their official key prefixes.
OPTIONAL_PARTS: dict[str, tuple[str, ...]] = {
    "decoder": ("decoder.", "decoder_proj.", "position_embedding.", "reconstruction_head."),
    "clustering_head": ("clustering_head.",),
    "cls_cluster_head": ("cls_cluster_head.",),
}

# Inside one HF ViT block (4.x names) -> inside one of our blocks.
_BLOCK_PARTS: dict[str, str] = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_QKV = ("query", "key", "value")

# Names outside the blocks that we keep (the clustering heads' included).
_SAME = ("sparse_tokens", "dense_proj.", "sparse_proj.", "clustering_head.", "cls_cluster_head.")
# Whole-name renames outside the blocks (official 4.x -> ours).
_RENAMES: dict[str, str] = {
    "encoder.embeddings.patch_embeddings.projection": "encoder.patch_embed",
    "encoder.embeddings.cls_token": "encoder.cls_token",
    "encoder.embeddings.position_embeddings": "encoder.pos_embed",
    "encoder.layernorm": "encoder.norm",
    "decoder.layernorm": "decoder.norm",
    "decoder_proj": "decoder.proj",
    "position_embedding.positional_encoding_gaussian_matrix": "decoder.fourier.gaussian_matrix",
    "reconstruction_head": "decoder.head",
}

# transformers 5.x -> 4.x, inside ``{encoder,decoder}.layers.{i}.``
_V5_PARTS: dict[str, str] = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
    "layernorm_before": "layernorm_before",
    "layernorm_after": "layernorm_after",
}
_V5_BLOCK = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_V4_BLOCK = re.compile(r"^(encoder|decoder)\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_OUR_BLOCK = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)$")


def to_v4_layout(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename transformers-5.x ViT keys to the 4.x layout; 4.x keys pass through."""
    out = {}
    for key, value in state.items():
        m = _V5_BLOCK.match(key)
        if m and m.group(3) in _V5_PARTS:
            part, i = m.group(1), m.group(2)
            key = f"{part}.encoder.layer.{i}.{_V5_PARTS[m.group(3)]}.{m.group(4)}"
        out[key] = value
    return out


def from_official(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Map an official state dict (4.x or 5.x) to our names: ``(mapped, unknown)``, the tensors
    under our names and the keys that match nothing (the caller reports them); keys on the
    known-unused list are dropped."""
    mapped: dict[str, Tensor] = {}
    unknown: list[str] = []
    qkv: dict[tuple[str, str, str], dict[str, Tensor]] = {}
    for key, value in to_v4_layout(state).items():
        if key.startswith(KNOWN_UNUSED_PREFIXES):
            continue
        m = _V4_BLOCK.match(key)
        if m:
            part, i, inner, kind = m.groups()
            if inner.startswith("attention.attention.") and inner.rsplit(".", 1)[1] in _QKV:
                qkv.setdefault((part, i, kind), {})[inner.rsplit(".", 1)[1]] = value
            elif inner in _BLOCK_PARTS:
                mapped[f"{part}.blocks.{i}.{_BLOCK_PARTS[inner]}.{kind}"] = value
            else:
                unknown.append(key)
            continue
        new = _rename(key, _RENAMES) or (key if key.startswith(_SAME) else None)
        if new is None:
            unknown.append(key)
        else:
            mapped[new] = value
    for (part, i, kind), parts in qkv.items():
        missing = [name for name in _QKV if name not in parts]
        if missing:
            prefix = f"{part}.encoder.layer.{i}.attention.attention"
            unknown.extend(f"{prefix}.{name}.{kind} (missing)" for name in missing)
            continue
        mapped[f"{part}.blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts[n] for n in _QKV], 0)
    return mapped, unknown


def to_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map our state dict to the official transformers-4.x layout (qkv split back apart)."""
    inverse_blocks = {ours: theirs for theirs, ours in _BLOCK_PARTS.items()}
    inverse_names = {ours: theirs for theirs, ours in _RENAMES.items()}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("tokenizer."):
            continue  # the frozen VQGAN ships separately
        m = _OUR_BLOCK.match(key)
        if m:
            part, i, inner, kind = m.groups()
            prefix = f"{part}.encoder.layer.{i}"
            if inner == "attn.qkv":
                for name, chunk in zip(_QKV, value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}.attention.attention.{name}.{kind}"] = chunk.contiguous()
            else:
                out[f"{prefix}.{inverse_blocks[inner]}.{kind}"] = value
            continue
        out[_rename(key, inverse_names) or key] = value
    return out


def _rename(key: str, names: dict[str, str]) -> str | None:
    """``key`` renamed by ``names`` (whole names, or the module before ``.weight``/``.bias``)."""
    if key in names:
        return names[key]
    stem, _, kind = key.rpartition(".")
    return f"{names[stem]}.{kind}" if stem in names else None


def carries(keys: list[str], part: str) -> bool:
    """Whether official-layout ``keys`` include tensors of ``part`` (of :data:`OPTIONAL_PARTS`)."""
    return any(
        k.startswith(OPTIONAL_PARTS[part]) and not k.startswith(KNOWN_UNUSED_PREFIXES) for k in keys
    )


def absent_parts(model: nn.Module, keys: list[str]) -> list[str]:
    """The optional parts ``model`` builds that official-layout ``keys`` lack entirely."""
    built = [part for part in OPTIONAL_PARTS if getattr(model, part) is not None]
    return [part for part in built if not carries(keys, part)]


def load_official(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load an official-layout (4.x or 5.x) state dict into a STELLAR ``model`` strictly.

    Every tensor is loaded, on the known-unused list, or belongs to a part ``model.purpose``
    does not build; a part the file lacks entirely starts from its initialisation (for
    pretraining from an encoder-only release). Anything else (a missing, unexpected or
    wrong-shape key, named in the official 4.x layout, or a non-finite tensor) raises
    ValueError before anything is copied.
    """
    state = to_v4_layout(state)
    absent = absent_parts(model, list(state))  # load_stellar refused a reconstruct without decoder
    skip = [p for part, ps in OPTIONAL_PARTS.items() if getattr(model, part) is None for p in ps]
    fresh = [p for part in absent for p in OPTIONAL_PARTS[part]]
    expected = {k: tuple(v.shape) for k, v in to_official(model.state_dict()).items()}
    used = check_state(
        expected,
        state,
        source=source,
        target=f"this STELLAR architecture (purpose={model.purpose!r})",
        unused=KNOWN_UNUSED_PREFIXES + tuple(skip),
        may_be_missing=fresh,
    )
    if absent:
        logger.warning("%s lacks %s: they start from random init", source, ", ".join(absent))
    # A model built on the meta device takes the file's tensors themselves (in fp32).
    assign = any(t.is_meta for t in model.state_dict().values())
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in used.items()}
    model.load_state_dict(from_official(tensors)[0], strict=not absent, assign=assign)
