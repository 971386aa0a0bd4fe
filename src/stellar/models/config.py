"""Model configuration: dataclasses that read and write the official ``config.json`` schema."""

from __future__ import annotations

import dataclasses
import json
import logging
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stellar.errors import UsageError

logger = logging.getLogger(__name__)

DecoderHead = Literal["pixel", "vq"]
ARCHITECTURE = "stellar"
# Keys by which other libraries' configs (HF transformers, timm) name their model.
_FOREIGN_MARKERS = ("model_type", "architectures")


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

    def __post_init__(self) -> None:
        _check_types(self, "encoder.")

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

    def __post_init__(self) -> None:
        _check_types(self, "decoder.")


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
        if isinstance(self.encoder, Mapping):
            self.encoder = _from_fields(EncoderConfig, self.encoder, "encoder")
        if isinstance(self.decoder, Mapping):
            self.decoder = _from_fields(DecoderConfig, self.decoder, "decoder")
        _check_types(self, "")
        self.validate()

    def validate(self) -> None:
        """Raise UsageError when the fields cannot describe a working model."""
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
        if self.architecture != ARCHITECTURE:
            problems.append(f"architecture must be {ARCHITECTURE!r}, got {self.architecture!r}")
        if enc.hidden_act != "gelu":
            problems.append(f"only hidden_act='gelu' is supported, got {enc.hidden_act!r}")
        if self.predictor_layers != 2:
            problems.append("only predictor_layers=2 (the released heads) is supported")
        if problems:
            raise UsageError("invalid STELLAR config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict in the official schema."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StellarConfig:
        """Build from a dict in the official schema; unknown keys are logged and ignored.

        Raises:
            ValueError: ``data`` is not a mapping, is another library's config (HF
                ``model_type`` / ``architectures``, or ``architecture`` other than
                ``"stellar"``), names no STELLAR field, or a field has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise UsageError(
                f"expected a STELLAR config object (a JSON object / mapping), got "
                f"{type(data).__name__}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        if "architecture" not in data:
            foreign = {k: data[k] for k in _FOREIGN_MARKERS if k in data}
            if foreign:  # e.g. an HF ViTMAE config.json: not ours, whatever its widths
                shown = ", ".join(f"{k}={v!r}" for k, v in foreign.items())
                raise UsageError(
                    f"expected a STELLAR config (architecture={ARCHITECTURE!r}), got another "
                    f"library's config ({shown})"
                )
            if not names & set(data):  # all defaults would silently be stellar-b16
                raise UsageError(
                    f"expected a STELLAR config, found none of its fields (got keys: "
                    f"{', '.join(sorted(map(str, data))) or 'none'})"
                )
        return _from_fields(cls, data, "config")

    def save(self, path: str | Path) -> None:
        """Write ``config.json``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> StellarConfig:
        """Read a ``config.json``."""
        try:
            data = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"{path} is not valid JSON: {err}") from err
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise UsageError(f"{path}: {err}") from None

    def replace(self, **changes: Any) -> StellarConfig:
        """A copy with top-level fields changed (``encoder=`` / ``decoder=`` take dicts too)."""
        data = self.to_dict()
        for key, value in changes.items():
            if key in ("encoder", "decoder") and isinstance(value, dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return StellarConfig.from_dict(data)


def _from_fields(cls: type, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise UsageError(f"{where}: expected an object (mapping), got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        logger.warning("ignoring unknown %s keys: %s", where, ", ".join(unknown))
    return cls(**{k: v for k, v in data.items() if k in names})


def _check_types(obj: Any, prefix: str) -> None:
    """Check (and normalise) every field of a config dataclass against its annotation.

    ints must be integers (not bools), floats any real number (stored as float), strs and
    bools exactly that; a wrong type is a ValueError naming the field, so a config.json with
    ``"hidden_size": "96"`` fails on load rather than deep inside a forward pass.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        ok, normalised = _conforms(value, hints[f.name])
        if not ok:
            raise UsageError(
                f"{prefix}{f.name}: expected {_describe(hints[f.name])}, got "
                f"{type(value).__name__} {value!r}"
            )
        if normalised is not value:
            setattr(obj, f.name, normalised)


def _conforms(value: Any, hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint) and isinstance(value, str), value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            ok, normalised = _conforms(value, arg)
            if ok:
                return True, normalised
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok, int(value) if ok else value
    if hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if isinstance(hint, type):
        return isinstance(value, hint), value
    return True, value


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return "an object (mapping)"
    return getattr(hint, "__name__", str(hint))
