"""Model configuration: dataclasses that read and write the official ``config.json`` schema."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from stellar.errors import UsageError
from stellar.schema import bounded, build

DecoderHead = Literal["pixel", "vq"]
ARCHITECTURE = "stellar"


@dataclass
class EncoderConfig:
    """The ViT encoder (HF ``ViTConfig`` field names)."""

    hidden_size: int = bounded(768, low=1)
    num_hidden_layers: int = bounded(12, low=1)
    num_attention_heads: int = bounded(12, low=1)
    intermediate_size: int = bounded(3072, low=1)
    image_size: int = bounded(224, low=1)
    patch_size: int = bounded(16, low=1)
    num_channels: int = bounded(3, low=1)
    layer_norm_eps: float = bounded(1e-12, low=0, low_open=True)
    qkv_bias: bool = True
    hidden_act: Literal["gelu"] = "gelu"  # the released models' activation

    @property
    def grid_size(self) -> int:
        """Patches per side at the native resolution."""
        return self.image_size // self.patch_size


@dataclass
class DecoderConfig:
    """The reconstruction decoder's transformer (its depth is ``num_decoder_layers``)."""

    hidden_size: int = bounded(512, low=1)
    num_attention_heads: int = bounded(8, low=1)
    intermediate_size: int = bounded(2048, low=1)


@dataclass
class StellarConfig:
    """Everything that fixes the architecture of a STELLAR model.

    Field names follow the official ``config.json``; ``vq_codebook_size`` is our addition (the
    released models use 1024). Values from outside (a file, overrides) are type- and
    range-checked by :func:`from_dict` and :meth:`replace`; construction checks the rules that
    join fields.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    num_sparse_tokens: int = bounded(16, low=1)
    # None: scaled dot-product assignment logits instead of cosine / temperature.
    spatial_temp: float | None = bounded(0.06, low=0, low_open=True)
    num_decoder_layers: int = bounded(6, low=1)
    decoder_head: DecoderHead = "vq"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    num_clusters: int = bounded(16384, low=1)
    prototype_dim: int = bounded(256, low=1)
    predictor_layers: Literal[2] = 2  # the released clustering heads' depth
    predictor_hidden_dim: int = bounded(2048, low=1)
    logits_temp: float = bounded(0.12, low=0, low_open=True)
    sk_temp: float = bounded(0.06, low=0, low_open=True)
    n_sk_iter: int = bounded(3, low=1)
    # In the official schema; the released models use 1.0 and nothing else is implemented.
    sk_scale: float = bounded(1.0, low=1.0, high=1.0)
    vq_codebook_size: int = bounded(1024, low=1)
    architecture: Literal["stellar"] = ARCHITECTURE

    def __post_init__(self) -> None:
        enc, dec = self.encoder, self.decoder
        problems = []
        if enc.hidden_size % enc.num_attention_heads:
            problems.append(
                f"encoder.hidden_size {enc.hidden_size} is not divisible by "
                f"num_attention_heads {enc.num_attention_heads}"
            )
        if enc.image_size % enc.patch_size:
            problems.append(
                f"encoder.image_size {enc.image_size} is not divisible by patch_size "
                f"{enc.patch_size}"
            )
        if dec.hidden_size % dec.num_attention_heads:
            problems.append(
                f"decoder.hidden_size {dec.hidden_size} is not divisible by its "
                f"num_attention_heads {dec.num_attention_heads}"
            )
        if dec.hidden_size % 2:  # the Fourier position encoding is (sin, cos) pairs
            problems.append(f"decoder.hidden_size {dec.hidden_size} is odd; expected an even width")
        if problems:
            raise UsageError("invalid STELLAR config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict in the official schema."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StellarConfig:
        """Build from a dict in the official schema; unknown keys are logged and ignored.

        Raises:
            UsageError: not a mapping, no STELLAR field (e.g. an HF ViT config, which would
                otherwise silently be stellar-b16), or a field of the wrong type or range.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        if isinstance(data, Mapping) and not names & set(data):
            raise UsageError(
                f"expected a STELLAR config (architecture={ARCHITECTURE!r}), found none of its "
                f"fields (got keys: {', '.join(sorted(map(str, data))) or 'none'})"
            )
        return build(cls, data, unknown="warn")

    def replace(self, **changes: Any) -> StellarConfig:
        """A checked copy with fields changed (``encoder=`` / ``decoder=`` take dicts of fields).

        Raises:
            UsageError: an unknown key (listing the valid ones), a wrong type or range, or a
                combination that cannot make a model.
        """
        return build(StellarConfig, merge_fields(self.to_dict(), changes))


def merge_fields(data: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with ``changes`` applied; a mapping given for a section is merged into it."""
    merged = dict(data)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_fields(merged[key], value)
        else:
            merged[key] = value
    return merged
