"""Training configuration: dataclass defaults ⊕ a YAML preset or file ⊕ ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from stellar.losses.objective import ObjectiveConfig


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
    """Defaults ⊕ preset (name) or YAML file ⊕ dotted ``key=value`` overrides (YAML-typed)."""
    data: dict[str, Any] = {}
    if preset_or_path:
        data = _read_yaml(preset_or_path)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return _build(TrainConfig, data, "")


def _read_yaml(preset_or_path: str) -> dict[str, Any]:
    path = Path(preset_or_path)
    if not path.is_file():
        candidate = resources.files("stellar") / "configs" / f"{preset_or_path}.yaml"
        if not candidate.is_file():
            raise ValueError(
                f"{preset_or_path!r} is neither a YAML file nor a preset "
                f"(presets: {', '.join(preset_names())})"
            )
        text = candidate.read_text()
    else:
        text = path.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{preset_or_path}: expected a mapping at the top level of the YAML")
    return data


def _as_float(value: str, key: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"config key {key} expects a number, got {value!r}") from None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise ValueError(f"override {key}: {part} is not a section")
    data[parts[-1]] = value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"valid keys{' under ' + where.rstrip('.') if where else ''}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default_factory() if callable(fields[name].default_factory) else None
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"config key {where}{name} must be a section (mapping)")
            value = _build(type(default), value, f"{where}{name}.")
        elif isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, str) and "float" in str(fields[name].type):
            value = _as_float(value, where + name)  # YAML 1.1 reads "1e-3" as a string
        kwargs[name] = value
    return cls(**kwargs)
