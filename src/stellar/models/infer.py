"""An architecture read from files that carry no STELLAR config: an HF ViT ``config.json``, or,
as the last resort, the tensor shapes (:func:`infer_config`, the one place that does it; what
no shape fixes keeps the paper's defaults, which the caller logs: :func:`defaulted_fields`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stellar.checkpoint.weights import read_json
from stellar.errors import UsageError
from stellar.models.config import DecoderConfig, EncoderConfig, StellarConfig
from stellar.schema import build

# Heads of the standard ViT of each width (Ti/S/B/L/H, our tiny preset, the 512-wide decoder).
HEADS_BY_WIDTH: dict[int, int] = {
    96: 4,
    192: 3,
    256: 4,
    384: 6,
    512: 8,
    768: 12,
    1024: 16,
    1280: 16,
}
# The HF ViT config.json keys an encoder needs (EncoderConfig shares the HF names).
_HF_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# Tensors (our names) without which no ViT can be read from the shapes.
_NEEDED = {
    "encoder.patch_embed.weight": "patch embedding",
    "encoder.pos_embed": "position embeddings",
    "encoder.blocks.0.mlp.fc1.weight": "first MLP",
}


def heads_for_width(width: int) -> int:
    """Attention heads of the standard ViT of this width.

    Raises:
        ValueError: a width without a standard head count.
    """
    if width in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[width]
    known = ", ".join(f"{w}: {h}" for w, h in HEADS_BY_WIDTH.items())
    raise UsageError(
        f"cannot tell the number of attention heads of a width-{width} transformer from its "
        f"tensors (known widths: {known}): put a config.json beside the weights"
    )


def encoder_from_hf(path: Path) -> EncoderConfig:
    """The encoder configuration of an HF ViT / ViTMAE ``config.json``."""
    data = read_json(path)
    if not isinstance(data, dict) or any(k not in data for k in _HF_KEYS):
        raise UsageError(f"{path} is not an HF ViT config: it needs {', '.join(_HF_KEYS)}")
    fields = {f.name for f in dataclasses.fields(EncoderConfig)}
    try:  # type- and range-checked; hidden_act must be the encoder's gelu
        return build(EncoderConfig, {k: v for k, v in data.items() if k in fields})
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from None


def _depth(shapes: Mapping[str, Sequence[int]], part: str) -> int:
    pattern = re.compile(rf"^{part}\.blocks\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in shapes if (m := pattern.match(k))), default=-1)


def infer_config(shapes: Mapping[str, Sequence[int]], heads: int | None = None) -> StellarConfig:
    """The config that tensor shapes (our key names) describe.

    Args:
        shapes: ``key -> shape``; the encoder's are required, the rest (concept tokens,
            decoder, clustering heads) set their fields when present and keep the defaults
            otherwise, so an encoder-only file reads too.
        heads: the encoder's head count when something else says it (default: the standard
            ViT's for the width).

    Raises:
        ValueError: an encoder tensor is missing, the grid is not square, or the width has no
            standard head count.
    """
    absent = [f"{what} ({key})" for key, what in _NEEDED.items() if key not in shapes]
    if absent:
        raise UsageError(
            f"cannot read a ViT architecture from the tensor shapes: missing the "
            f"{', '.join(absent)}; pass the complete file, or a config.json beside it"
        )
    d, channels, _, patch = shapes["encoder.patch_embed.weight"]
    positions = shapes["encoder.pos_embed"][1] - 1
    side = math.isqrt(positions)
    if side * side != positions:
        raise UsageError(
            f"the encoder has {positions} patch positions (+ CLS), not a square grid: pass a "
            "config.json"
        )
    encoder = EncoderConfig(
        hidden_size=d,
        num_hidden_layers=_depth(shapes, "encoder"),
        num_attention_heads=heads if heads is not None else heads_for_width(d),
        intermediate_size=shapes["encoder.blocks.0.mlp.fc1.weight"][0],
        image_size=side * patch,
        patch_size=patch,
        num_channels=channels,
        qkv_bias="encoder.blocks.0.attn.qkv.bias" in shapes,
    )
    fields: dict[str, Any] = {"encoder": encoder}
    if "sparse_tokens" in shapes:
        fields["num_sparse_tokens"] = shapes["sparse_tokens"][0]
    if "decoder.proj.weight" in shapes:
        width = shapes["decoder.proj.weight"][0]
        decoder = {"hidden_size": width, "num_attention_heads": heads_for_width(width)}
        if "decoder.blocks.0.mlp.fc1.weight" in shapes:
            decoder["intermediate_size"] = shapes["decoder.blocks.0.mlp.fc1.weight"][0]
        fields["decoder"] = DecoderConfig(**decoder)
    if _depth(shapes, "decoder"):
        fields["num_decoder_layers"] = _depth(shapes, "decoder")
    head = shapes.get("decoder.head.weight")
    if head is not None:
        fields["decoder_head"] = "pixel" if len(head) == 4 else "vq"
        if len(head) == 2:
            fields["vq_codebook_size"] = head[0]
    for part in ("clustering_head", "cls_cluster_head"):
        if f"{part}.layer.weight" in shapes:
            fields["num_clusters"], fields["prototype_dim"] = shapes[f"{part}.layer.weight"]
        if f"{part}.predictor.layers.0.weight" in shapes:
            fields["predictor_hidden_dim"] = shapes[f"{part}.predictor.layers.0.weight"][0]
    return StellarConfig(**fields)


def defaulted_fields(config: StellarConfig) -> list[str]:
    """The values of an inferred config that no tensor shape fixes (what was assumed)."""
    enc, dec = config.encoder, config.decoder
    return [
        f"encoder.num_attention_heads={enc.num_attention_heads} (standard for its width)",
        f"decoder.num_attention_heads={dec.num_attention_heads} (standard for its width)",
        f"spatial_temp={config.spatial_temp}",
        f"encoder.layer_norm_eps={enc.layer_norm_eps}",
        f"logits_temp={config.logits_temp}",
        f"sk_temp={config.sk_temp}",
    ]
