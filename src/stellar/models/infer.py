"""Infer a :class:`StellarConfig` from the tensor shapes of a bare official checkpoint.

Shapes fix the widths, depths, patch size, native resolution, token count, decoder depth and
head type. What they cannot fix takes the paper's defaults, and the loader logs which:
attention heads come from the table of known widths (ViT-B 12, L 16, H 16, ...; another width
is refused, not guessed), the spatial temperature is 0.06, the clustering temperatures
0.12 / 0.06.
"""

from __future__ import annotations

import math
import re

from torch import Tensor

from stellar.checkpoint.official import to_v4_layout
from stellar.errors import UsageError
from stellar.models.config import DecoderConfig, EncoderConfig, StellarConfig

# Heads for the widths in use (ViT-Ti/S/B/L/H, our tiny preset, the 512-wide decoder).
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


def heads_for_width(width: int, guess: bool = True) -> int:
    """Attention heads of a ViT of this width (known table, else width / 64 if ``guess``)."""
    if width in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[width]
    if guess and width % 64 == 0:
        return width // 64
    known = ", ".join(f"{w}: {h}" for w, h in HEADS_BY_WIDTH.items())
    raise UsageError(
        f"cannot tell the number of attention heads of a width-{width} transformer from its "
        f"tensors (no head count is standard for it; known widths: {known}): put a config.json "
        "beside the weights"
    )


def defaulted_fields(config: StellarConfig) -> list[str]:
    """The values of an inferred config that no tensor shape fixes (what was assumed)."""
    enc, dec = config.encoder, config.decoder
    return [
        f"encoder.num_attention_heads={enc.num_attention_heads} (standard for width "
        f"{enc.hidden_size})",
        f"decoder.num_attention_heads={dec.num_attention_heads} (standard for width "
        f"{dec.hidden_size})",
        f"spatial_temp={config.spatial_temp}",
        f"encoder.layer_norm_eps={enc.layer_norm_eps}",
        f"logits_temp={config.logits_temp}",
        f"sk_temp={config.sk_temp}",
    ]


def _depth(keys: list[str], part: str) -> int:
    pattern = re.compile(rf"^{part}\.encoder\.layer\.(\d+)\.")
    layers = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(layers) + 1 if layers else 0


def _first(state: dict[str, Tensor], *keys: str) -> Tensor | None:
    return next((state[k] for k in keys if k in state), None)


def infer_config(state: dict[str, Tensor], heads: int | None = None) -> StellarConfig:
    """Build the config that the tensors of an official-layout state dict describe.

    ``heads`` is the encoder's head count when something else (a model table's backbone)
    says it; otherwise it comes from the width and a width without a standard head count is
    refused rather than guessed.

    The encoder's tensors must be there (else a ValueError names the missing ones); decoder and
    clustering-head fields are inferred from whichever of their tensors are present and keep
    their defaults otherwise, so an encoder-only or partial file still loads for
    ``purpose="encode"`` (the strict loader reports what a larger purpose lacks).
    """
    state = to_v4_layout(state)
    keys = list(state)
    need = ["sparse_tokens", "encoder.embeddings.patch_embeddings.projection.weight"]
    absent = [k for k in need if k not in state]
    if absent:
        raise UsageError(
            f"not a STELLAR checkpoint: missing {', '.join(absent)} (found {len(keys)} tensors,"
            f" e.g. {', '.join(keys[:5])})"
        )
    encoder_needs = [
        "encoder.embeddings.position_embeddings",
        "encoder.encoder.layer.0.intermediate.dense.weight",
    ]
    absent = [k for k in encoder_needs if k not in state]
    if absent:
        raise UsageError(
            f"not a complete STELLAR checkpoint: missing {', '.join(absent)}, which the encoder "
            "needs (pass the complete file, or a config.json beside it)"
        )
    r, d = state["sparse_tokens"].shape
    patch = state["encoder.embeddings.patch_embeddings.projection.weight"].shape[-1]
    positions = state["encoder.embeddings.position_embeddings"].shape[1] - 1
    side = math.isqrt(positions)
    if side * side != positions:
        raise UsageError(
            f"encoder.embeddings.position_embeddings holds {positions} patch positions (+ CLS), "
            "which is not a square grid: pass a config.json"
        )
    mlp = state["encoder.encoder.layer.0.intermediate.dense.weight"].shape[0]
    encoder = EncoderConfig(
        hidden_size=d,
        num_hidden_layers=_depth(keys, "encoder"),
        num_attention_heads=heads if heads is not None else heads_for_width(d, guess=False),
        intermediate_size=mlp,
        image_size=side * patch,
        patch_size=patch,
        qkv_bias="encoder.encoder.layer.0.attention.attention.query.bias" in state,
    )
    fields: dict = {"encoder": encoder, "num_sparse_tokens": r}
    fields.update(_decoder_fields(state, keys))
    fields.update(_head_fields(state))
    return StellarConfig(**fields)


def _decoder_fields(state: dict[str, Tensor], keys: list[str]) -> dict:
    """Decoder fields from the decoder tensors that are present (none: the defaults)."""
    fields: dict = {}
    decoder: dict = {}
    if "decoder_proj.weight" in state:
        width = state["decoder_proj.weight"].shape[0]
        decoder.update(hidden_size=width, num_attention_heads=heads_for_width(width, guess=False))
    mlp = state.get("decoder.encoder.layer.0.intermediate.dense.weight")
    if mlp is not None:
        decoder["intermediate_size"] = mlp.shape[0]
    if decoder:
        fields["decoder"] = DecoderConfig(**decoder)
    depth = _depth(keys, "decoder")
    if depth:
        fields["num_decoder_layers"] = depth
    head = state.get("reconstruction_head.weight")
    if head is not None:
        fields["decoder_head"] = "pixel" if head.ndim == 4 else "vq"
        if head.ndim == 2:
            fields["vq_codebook_size"] = head.shape[0]
    fourier = state.get("position_embedding.positional_encoding_gaussian_matrix")
    if fourier is not None:
        fields["fourier_features"] = fourier.shape[1]
    return fields


def _head_fields(state: dict[str, Tensor]) -> dict:
    """Clustering-head fields from whichever of the two heads' tensors are present."""
    fields: dict = {}
    prototypes = _first(state, "clustering_head.layer.weight", "cls_cluster_head.layer.weight")
    if prototypes is not None:
        k, proto = prototypes.shape
        fields.update(num_clusters=k, prototype_dim=proto)
    hidden = _first(
        state,
        "clustering_head.predictor.layers.0.weight",
        "cls_cluster_head.predictor.layers.0.weight",
    )
    if hidden is not None:
        fields["predictor_hidden_dim"] = hidden.shape[0]
    return fields
