"""Training configuration: dataclass defaults ⊕ a YAML preset or file ⊕ ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import datetime
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from stellar.errors import UsageError
from stellar.losses.objective import ObjectiveConfig
from stellar.models.config import StellarConfig


@dataclass
class DataConfig:
    """Where images come from: ``source`` is ``scenes`` (built in) or ``folder`` (``root``)."""

    source: str = "scenes"
    root: str | None = None
    canvas_size: int = 256
    scenes_size: int = 64
    scenes_length: int = 10000
    num_workers: int = 0
    seed: int = 0


@dataclass
class AugmentConfig:
    """Multi-view augmentation sizes and counts (SPEC §3; scaled down for CPU presets)."""

    global_size: int = 224
    local_size: int = 96
    n_global: int = 8
    n_local: int = 8
    n_masked: int = 8
    global_scale: tuple[float, float] = (0.36, 1.0)
    local_scale: tuple[float, float] = (0.06, 0.36)
    mask_ratio: float = 0.8
    focal_mode: str | None = "gaussian"
    focal_prob: float = 0.5
    color: dict[str, Any] = field(default_factory=dict)  # color_blur kwargs, e.g. hue: 0.5


@dataclass
class OptimConfig:
    """AdamW with a cosine schedule, linear warm-up and a floor (SPEC §4)."""

    lr: float = 1.5e-4
    weight_decay: float = 0.04
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: float = 0.1
    min_lr: float = 1e-6
    clip_grad: float | None = 3.0


@dataclass
class EMAConfig:
    """Optional EMA teacher supplying the clustering targets."""

    enabled: bool = False
    momentum: float = 0.996
    final_momentum: float | None = None


@dataclass
class InitConfig:
    """Where the weights start: MAE encoder weights, or a STELLAR checkpoint to continue."""

    encoder: str | None = None
    checkpoint: str | None = None


@dataclass
class TrainConfig:
    """Everything a pretraining run needs."""

    model: str = "stellar-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    vq_model: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    init: InitConfig = field(default_factory=InitConfig)
    batch_size: int = 128
    grad_accum: int = 1
    epochs: int = 150
    max_steps: int | None = None
    stop_at: int | None = None  # checkpoint and stop early (schedule unchanged): preemption
    precision: str = "auto"
    compile: bool = False
    strategy: str = "ddp"
    seed: int = 0
    out: str = "runs/stellar"
    log_every: int = 10
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    nonfinite: str = "stop"
    tensorboard: bool = True
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (for YAML/JSON)."""
        return dataclasses.asdict(self)


def preset_names() -> list[str]:
    """Names of the YAML presets shipped with the package."""
    folder = resources.files("stellar") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_config(
    preset_or_path: str | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Defaults ⊕ preset (name) or YAML file ⊕ dotted ``key=value`` overrides (YAML-typed).

    Every value is checked against its field's annotation: a ValueError names the key, the
    expected type and the value given.
    """
    data: dict[str, Any] = {}
    if preset_or_path:
        data = _read_yaml(preset_or_path)
    texts: dict[str, str] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        key = key.strip()
        _set_dotted(data, key, yaml.safe_load(raw))
        texts[key] = raw.strip()
    cfg = _build(TrainConfig, data, "", texts)
    cfg.model_overrides = check_model_overrides(cfg.model_overrides)
    return cfg


def check_model_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """``model_overrides`` checked against :class:`StellarConfig` (keys and value types).

    ``encoder`` and ``decoder`` take mappings of their own fields, merged into the preset's.
    Unknown keys raise: the model side would only warn and train the unchanged model.
    """
    nested = {
        name: hint
        for name, hint in typing.get_type_hints(StellarConfig).items()
        if dataclasses.is_dataclass(hint)
    }
    valid = [f.name for f in dataclasses.fields(StellarConfig) if f.name not in nested]
    valid += [
        f"{name}.{{{', '.join(f.name for f in dataclasses.fields(cls))}}}"
        for name, cls in nested.items()
    ]
    checked, unknown = {}, []
    for name, value in overrides.items():
        if name in nested:
            if not isinstance(value, dict):
                raise UsageError(
                    f"config key model_overrides.{name} expects a mapping "
                    f"(e.g. model_overrides.{name}.hidden_size=256), got {value!r}"
                )
            fields = {f.name for f in dataclasses.fields(nested[name])}
            unknown += [f"{name}.{k}" for k in value if k not in fields]
            known = {k: v for k, v in value.items() if k in fields}
            checked[name] = _convert_fields(nested[name], known, f"model_overrides.{name}.")
        elif name in valid:
            checked[name] = _convert_fields(StellarConfig, {name: value}, "model_overrides.")[name]
        else:
            unknown.append(name)
    if unknown:
        raise UsageError(
            f"unknown model_overrides key(s) {', '.join(sorted(unknown))}; "
            f"valid keys: {', '.join(valid)}"
        )
    return checked


def _read_yaml(preset_or_path: str) -> dict[str, Any]:
    path = Path(preset_or_path)
    if not path.is_file():
        candidate = resources.files("stellar") / "configs" / f"{preset_or_path}.yaml"
        if not candidate.is_file():
            raise UsageError(
                f"{preset_or_path!r} is neither a YAML file nor a preset "
                f"(presets: {', '.join(preset_names())})"
            )
        text = candidate.read_text()
    else:
        text = path.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise UsageError(f"{preset_or_path}: expected a mapping at the top level of the YAML")
    return data


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise UsageError(f"override {key}: {part} is not a section")
    data[parts[-1]] = value


def _build(cls: type, data: dict[str, Any], where: str, texts: dict[str, str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UsageError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"valid keys{' under ' + where.rstrip('.') if where else ''}: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):
                raise UsageError(
                    f"config key {where}{name} must be a section (mapping), got {value!r}"
                )
            kwargs[name] = _build(hints[name], value, f"{where}{name}.", texts)
        else:
            key = where + name
            kwargs[name] = _convert(value, hints[name], key, texts.get(key))
    return cls(**kwargs)


def _convert_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {name: _convert(value, hints[name], where + name) for name, value in data.items()}


_SCALARS = (bool, int, float, datetime.date)  # what YAML reads from an unquoted scalar


def _convert(value: Any, hint: Any, key: str, text: str | None = None) -> Any:
    """``value`` as the annotated type, or a ValueError naming key, expected type and value.

    ``text`` is the override's text as typed: a string field keeps it verbatim (YAML would
    read ``out=010`` as the integer 8).
    """
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (hint,) = [t for t in options if t is not type(None)]  # the configs use X | None only
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an integer"
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        expected = "a number"
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, _SCALARS):
            return text if text is not None else str(value)
        expected = "a string"
    elif origin is typing.Literal:
        if value in args:
            return value
        expected = "one of " + ", ".join(map(repr, args))
    elif origin is tuple:
        if isinstance(value, list | tuple) and len(value) == len(args):
            pairs = enumerate(zip(value, args, strict=True))
            return tuple(_convert(v, t, f"{key}[{i}]") for i, (v, t) in pairs)
        expected = f"a list of {len(args)} values"
    elif origin is dict:
        if isinstance(value, dict):
            return value
        expected = "a mapping"
    else:  # an annotation these configs do not use: nothing to check against
        return value
    if value is None:
        expected += " (null is not allowed here)"
    raise UsageError(f"config key {key} expects {expected}, got {value!r}")
