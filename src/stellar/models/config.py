"""Model configuration: dataclasses that read and write the official ``config.json`` schema."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

DecoderHead = Literal["pixel", "vq"]


@dataclass
class EncoderConfig:
    """The ViT encoder (HF ``ViTConfig`` field names)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    hidden_act: str = "gelu"

    @property
    def grid_size(self) -> int:
        """Patches per side at the native resolution."""
        return self.image_size // self.patch_size


@dataclass
class DecoderConfig:
    """The reconstruction decoder's transformer (its depth is ``num_decoder_layers``)."""

    hidden_size: int = 512
    num_attention_heads: int = 8
    intermediate_size: int = 2048


@dataclass
class StellarConfig:
    """Everything that fixes the architecture of a STELLAR model.

    Field names follow the official ``config.json`` (see
    ``fixtures/reference/stellar-tiny/config.json``); ``vq_codebook_size`` and
    ``fourier_features`` are our additions (the released models use 1024 and 256).
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    num_sparse_tokens: int = 16
    spatial_temp: float | None = 0.06
    num_decoder_layers: int = 6
    decoder_head: DecoderHead = "vq"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    num_clusters: int = 16384
    prototype_dim: int = 256
    predictor_layers: int = 2
    predictor_hidden_dim: int = 2048
    logits_temp: float = 0.12
    sk_temp: float = 0.06
    n_sk_iter: int = 3
    sk_scale: float = 1.0
    vq_codebook_size: int = 1024
    fourier_features: int = 256
    architecture: str = "stellar"

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = _from_fields(EncoderConfig, self.encoder, "encoder")
        if isinstance(self.decoder, dict):
            self.decoder = _from_fields(DecoderConfig, self.decoder, "decoder")
        self.validate()

    def validate(self) -> None:
        """Raise ValueError when the fields cannot describe a working model."""
        enc = self.encoder
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
        if self.decoder.hidden_size % self.decoder.num_attention_heads:
            problems.append("decoder.hidden_size is not divisible by its num_attention_heads")
        if self.decoder_head not in ("pixel", "vq"):
            problems.append(f"decoder_head must be 'pixel' or 'vq', got {self.decoder_head!r}")
        if self.num_sparse_tokens < 1:
            problems.append("num_sparse_tokens must be >= 1")
        if enc.hidden_act != "gelu":
            problems.append(f"only hidden_act='gelu' is supported, got {enc.hidden_act!r}")
        if self.predictor_layers != 2:
            problems.append("only predictor_layers=2 (the released heads) is supported")
        if problems:
            raise ValueError("invalid STELLAR config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict in the official schema."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StellarConfig:
        """Build from a dict in the official schema; unknown keys are logged and ignored."""
        return _from_fields(cls, data, "config")

    def save(self, path: str | Path) -> None:
        """Write ``config.json``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> StellarConfig:
        """Read a ``config.json``."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> StellarConfig:
        """A copy with top-level fields changed (``encoder=`` / ``decoder=`` take dicts too)."""
        data = self.to_dict()
        for key, value in changes.items():
            if key in ("encoder", "decoder") and isinstance(value, dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return StellarConfig.from_dict(data)


def _from_fields(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        logger.warning("ignoring unknown %s keys: %s", where, ", ".join(unknown))
    return cls(**{k: v for k, v in data.items() if k in names})
