"""Training configuration: dataclass defaults ⊕ a YAML preset or file ⊕ ``key=value`` overrides.

Types and ranges sit on the fields and are checked by :func:`stellar.schema.build`; the rules
that join fields (the architecture's patch size included) run once, when a
:class:`TrainConfig` is built by :func:`load_config`, before anything is built or written.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from stellar.checkpoint.io import RUN_CONFIG
from stellar.data.augment import MultiViewAugment, num_kept
from stellar.errors import UsageError
from stellar.hub import recorded_tokenizer
from stellar.losses.objective import ObjectiveConfig
from stellar.models.config import StellarConfig, merge_fields
from stellar.models.registry import get_config, list_models
from stellar.schema import bounded, build, hints, parse_yaml

Precision = Literal["auto", "bf16", "fp32"]
DEFAULT_PRESET = "cpu-smoke"

# What a resumed run may change: how long it runs, what it logs, where its inputs now are. Any
# other difference would make the continued run a different one than the checkpoint's.
RESUMABLE_KEYS = frozenset(
    {
        "max_steps",
        "stop_at",
        "log_every",
        "ckpt_every",
        "keep_checkpoints",
        "tensorboard",
        "progress",
        "nonfinite",
        "data.num_workers",
        "data.root",
        "vq_model",
    }
)


@dataclass
class DataConfig:
    """Where images come from: ``source`` is ``scenes`` (built in) or ``folder`` (``root``)."""

    source: Literal["scenes", "folder"] = "scenes"
    root: str | None = None
    canvas_size: int = bounded(256, low=1)
    scenes_size: int = bounded(64, low=16)  # the scenes' smallest (render.MIN_SIZE)
    scenes_length: int = bounded(10000, low=1)
    num_workers: int = bounded(0, low=0)
    seed: int = 0


@dataclass
class OptimConfig:
    """AdamW with a cosine schedule, linear warm-up and a floor (the paper's ViT-B/16 recipe)."""

    lr: float = bounded(1.5e-4, low=0, low_open=True)
    weight_decay: float = bounded(0.04, low=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: float = bounded(0.1, low=0, high=1)  # fraction of the steps
    min_lr: float = bounded(1e-6, low=0)
    clip_grad: float | None = bounded(3.0, low=0, low_open=True)


@dataclass
class EMAConfig:
    """Optional EMA teacher supplying the clustering targets."""

    enabled: bool = False
    momentum: float = bounded(0.996, low=0, high=1)
    final_momentum: float | None = bounded(None, low=0, high=1)


@dataclass
class InitConfig:
    """Where the weights start: MAE encoder weights, or a STELLAR checkpoint to continue."""

    encoder: str | None = None
    checkpoint: str | None = None


@dataclass
class TrainConfig:
    """Everything a pretraining run needs (build it with :func:`load_config`)."""

    model: str = "stellar-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    vq_model: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    augment: MultiViewAugment = field(default_factory=MultiViewAugment)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    init: InitConfig = field(default_factory=InitConfig)
    batch_size: int = bounded(128, low=1)
    grad_accum: int = bounded(1, low=1)
    epochs: int = bounded(150, low=1)
    max_steps: int | None = bounded(None, low=1)
    stop_at: int | None = bounded(None, low=1)  # checkpoint and stop early: preemption
    precision: Precision = "auto"
    compile: bool = False
    # recompute each encoder block in the backward pass: less activation memory (ViT-L/H)
    activation_checkpointing: bool = False
    strategy: Literal["ddp", "fsdp"] = "ddp"
    seed: int = 0
    out: str = "runs/stellar"
    log_every: int = bounded(10, low=1)
    ckpt_every: int = bounded(1000, low=1)
    keep_checkpoints: int = bounded(2, low=1)
    nonfinite: Literal["stop", "skip"] = "stop"
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        """The rules that join fields; UsageError naming the keys."""
        # recorded absolute, so that a resume from another working folder finds them
        if self.data.root:
            self.data.root = os.path.abspath(self.data.root)
        if self.vq_model and os.path.exists(self.vq_model):
            self.vq_model = os.path.abspath(self.vq_model)
        if self.objective.global_align and not self.objective.clustering:
            raise UsageError(
                "objective.global_align makes the clustering terms cross-view, and "
                "objective.clustering is off: set objective.global_align=false too"
            )
        if self.strategy == "fsdp" and self.ema.enabled:  # the EMA teacher is not sharded
            raise UsageError("ema.enabled=true is not supported with strategy=fsdp")
        if self.data.source == "scenes" and self.data.root:
            raise UsageError(
                f"data.root={self.data.root} is set but data.source is 'scenes' (no files): "
                "add data.source=folder to train on the folder"
            )
        # init.checkpoint gives the architecture (checked once loaded) and, recorded here for a
        # resume that reads only this run's config, the tokenizer its run trained with
        if self.init.checkpoint:
            if self.init.encoder:
                raise UsageError(
                    "init.checkpoint continues a STELLAR, init.encoder starts one from MAE "
                    "weights: pass one of them"
                )
            if self.model_overrides:
                raise UsageError(
                    "model_overrides cannot change a model loaded from init.checkpoint; drop "
                    "them, or start from model=PRESET"
                )
            self.vq_model = self.vq_model or recorded_tokenizer(self.init.checkpoint)
            return
        if self.model not in list_models():
            raise UsageError(
                f"model: expected a registered model name ({', '.join(list_models())}), "
                f"got {self.model!r}"
            )
        base = get_config(self.model).to_dict()
        merged = merge_fields(base, self.model_overrides)
        check_against_model(self, build(StellarConfig, merged, "model_overrides."))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_against_model(cfg: TrainConfig, model: StellarConfig) -> None:
    """The settings that depend on the architecture: view sizes, the masking, KoLeo's concept
    tokens."""
    a, p = cfg.augment, model.encoder.patch_size
    for key in ("global_size", "local_size"):
        if (size := getattr(a, key)) % p:
            raise UsageError(
                f"augment.{key}: expected a multiple of the patch size {p}, got {size}"
            )
    if cfg.objective.views(a.n_masked, a.n_local).masked:
        try:
            num_kept((a.global_size // p) ** 2, a.mask_ratio)
        except ValueError as err:
            raise UsageError(f"augment.mask_ratio: {err}") from None
    if cfg.objective.koleo and model.num_sparse_tokens < 2:
        raise UsageError(
            "objective.koleo spreads the concept tokens apart and needs at least 2 of them, "
            f"the model has {model.num_sparse_tokens}: set objective.koleo=false"
        )


def preset_names() -> list[str]:
    folder = resources.files("stellar") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_config(
    config: str | Path | Mapping[str, Any] | TrainConfig | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> TrainConfig:
    """Defaults ⊕ ``config`` (a preset name, a YAML file, a mapping of fields, or a TrainConfig
    to re-check) ⊕ ``overrides`` (``key=value`` texts, or a mapping; dotted keys for sections),
    type-, range- and rule-checked once: a UsageError names the key, what it expects and the
    value given."""
    if isinstance(config, TrainConfig):
        data = config.to_dict()
    elif isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
    else:
        data = read_yaml(config) if config else {}
    for key, value in parse_overrides(overrides).items():
        *sections, name = key.split(".")
        target = data
        for part in sections:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise UsageError(f"override {key}: {part} is not a section")
        # a mapping merges into a section or a dict field; {} empties it
        target[name] = merge_fields(target, {name: value})[name] if value != {} else {}
    return build(TrainConfig, data)


def parse_overrides(overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``key=value`` texts as a mapping: YAML values, the text as typed for a str field."""
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed = {}
    for item in [overrides] if isinstance(overrides, str) else overrides:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise UsageError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        hint: Any = TrainConfig  # the annotation of the dotted key (None for an unknown one)
        for part in key.split("."):
            hint = hints(hint).get(part) if dataclasses.is_dataclass(hint) else None
        # YAML would read out=010 as the integer 8; a str field keeps the text.
        text = hint in (str, str | None) and raw != "null"
        parsed[key] = raw if text else parse_yaml(raw, f"override {item!r}")
    return parsed


def read_yaml(preset_or_path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file or a shipped preset."""
    path = Path(preset_or_path)
    if not path.is_file():
        path = resources.files("stellar") / "configs" / f"{preset_or_path}.yaml"
        if not path.is_file():
            raise UsageError(
                f"{preset_or_path!r} is neither a YAML file nor a preset "
                f"(presets: {', '.join(preset_names())})"
            )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise UsageError(f"cannot read {preset_or_path}: {why}") from None
    data = parse_yaml(text, str(preset_or_path)) or {}
    if not isinstance(data, dict):
        raise UsageError(f"{preset_or_path}: expected a mapping at the top level of the YAML")
    return data


def read_run_config(out: str | Path) -> dict[str, Any]:
    """The settings a run in ``out`` saved (``out/config.yaml``), for ``--resume``."""
    path = Path(out) / RUN_CONFIG
    if not path.is_file():
        raise UsageError(
            f"--resume continues the run in {out} with its saved settings, but {path} does "
            "not exist (is out= right?): drop --resume to start a fresh run"
        )
    data = read_yaml(path)
    try:  # the file was valid when the run wrote it: a fault here is an edit of it
        load_config(data)
    except UsageError as err:
        raise UsageError(f"{path} (the settings of the run to resume): {err}") from None
    return data


def resume_changes(
    saved: Mapping[str, Any], cfg: TrainConfig, saved_as: str = "its saved settings"
) -> list[str]:
    """The differences of ``cfg`` from a run's ``saved`` settings (``saved_as`` in the error),
    as ``"key old -> new"``; a UsageError naming every differing key not in
    :data:`RESUMABLE_KEYS`. Keys ``saved`` lacks compare as their defaults; ``out`` and
    ``stop_at`` (where and until when this invocation runs) are not settings of the run."""
    old, new = flatten(load_config(saved).to_dict()), flatten(cfg.to_dict())
    differ = sorted(k for k in (old | new).keys() - {"out", "stop_at"} if old.get(k) != new.get(k))
    shown = {k: f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in differ}
    if refused := [k for k in differ if k not in RESUMABLE_KEYS]:
        why = " (a changed architecture cannot load the checkpoint's weights)"
        architecture = any(k == "model" or k.startswith("model_overrides") for k in refused)
        listed = "; ".join(shown[k] for k in refused[:8])
        more = f"; and {len(refused) - 8} more" if len(refused) > 8 else ""
        raise UsageError(
            f"--resume continues {cfg.out} with {saved_as}; these differ"
            f"{why if architecture else ''}: {listed}{more}. A resume may change only "
            f"{', '.join(sorted(RESUMABLE_KEYS))}. Restore the others (overrides, "
            f"{Path(cfg.out) / RUN_CONFIG}), or start a new run from these weights with "
            f"init.checkpoint={cfg.out}/checkpoints/last"
        )
    return list(shown.values())


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict by dotted key (tuples as lists, as YAML reads them back)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat
