"""Training configuration: dataclass defaults ⊕ a YAML preset or file ⊕ ``key=value`` overrides.

Types and ranges are declared on the fields (``Literal`` enums, :func:`~stellar.schema.bounded`)
and checked by the one checker, :mod:`stellar.schema`; :meth:`TrainConfig.validate` adds the
rules that join several fields, and :func:`check_against_model` those that need the model's
architecture. Both run before anything is built or written.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from stellar.data.augment import MultiViewAugment
from stellar.data.color import ColorAugment
from stellar.errors import Bounds, UsageError
from stellar.losses.objective import ObjectiveConfig
from stellar.models.config import StellarConfig, merge_fields
from stellar.models.registry import get_config, list_models
from stellar.schema import bounded, build, check, field_names, nested

FocalMode = Literal["gaussian", "block"]
Precision = Literal["auto", "bf16", "bfloat16", "fp32", "float32"]

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where images come from: ``source`` is ``scenes`` (built in) or ``folder`` (``root``)."""

    source: Literal["scenes", "folder"] = "scenes"
    root: str | None = None
    canvas_size: int = bounded(256, low=1)
    scenes_size: int = bounded(64, low=1)
    scenes_length: int = bounded(10000, low=1)
    num_workers: int = bounded(0, low=0)
    seed: int = 0


@dataclass
class AugmentConfig:
    """Multi-view augmentation sizes and counts (the paper's; scaled down for CPU presets)."""

    global_size: int = bounded(224, low=1)
    local_size: int = bounded(96, low=1)
    n_global: int = bounded(8, low=1)
    n_local: int = bounded(8, low=0)
    n_masked: int = bounded(8, low=0)
    global_scale: tuple[float, float] = (0.36, 1.0)
    local_scale: tuple[float, float] = (0.06, 0.36)
    mask_ratio: float = bounded(0.8, low=0, high=1, high_open=True)
    focal_mode: FocalMode | None = "gaussian"
    focal_prob: float = bounded(0.5, low=0, high=1)
    color: dict[str, Any] = field(default_factory=dict)  # MultiViewAugment colour/blur keywords


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


# Ranges of fields declared in other modules' dataclasses (same rule as ``bounded``).
_SECTION_BOUNDS = {
    ("objective", "ot_iterations"): Bounds(low=1),
    ("objective", "ot_eps"): Bounds(low=0, low_open=True),
    ("objective", "koleo_weight"): Bounds(low=0),
    ("objective", "recon_weight"): Bounds(low=0),
}


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
    batch_size: int = bounded(128, low=1)
    grad_accum: int = bounded(1, low=1)
    epochs: int = bounded(150, low=1)
    max_steps: int | None = bounded(None, low=1)
    # checkpoint and stop early (schedule unchanged): preemption
    stop_at: int | None = bounded(None, low=1)
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

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (for YAML/JSON)."""
        return dataclasses.asdict(self)

    def validate(self, texts: dict[str, str] | None = None) -> TrainConfig:
        """Check every field (types, ranges) and every rule joining fields; returns self.

        Runs in :func:`load_config` and again when a :class:`~stellar.train.trainer.Trainer`
        starts (a config may be built or edited in Python), before anything is built.

        Raises:
            UsageError: naming the key, what it expects and the value.
        """
        check(self, texts=texts)
        for (section, name), rule in _SECTION_BOUNDS.items():
            value = getattr(getattr(self, section), name)
            if value is not None:
                rule.check(value, f"{section}.{name}")
        a = self.augment
        if a.n_masked > a.n_global:
            raise UsageError(
                f"augment.n_masked {a.n_masked} cannot exceed augment.n_global {a.n_global}"
            )
        if self.objective.global_align and a.n_global < 2:
            raise UsageError("objective.global_align needs augment.n_global >= 2")
        if self.strategy == "fsdp" and self.ema.enabled:
            # The teacher is an unsharded copy: its EMA update cannot mix with FSDP's shards.
            raise UsageError(
                "ema.enabled=true is not supported with strategy=fsdp (the EMA teacher is not "
                "sharded); use strategy=ddp or ema.enabled=false"
            )
        if self.init.checkpoint and self.model_overrides:
            raise UsageError(
                "model_overrides cannot change a model loaded from init.checkpoint (its "
                "architecture is the checkpoint's); drop them, or start from model=PRESET"
            )
        if not self.init.checkpoint:  # the architecture is known now: check against it
            self.model_overrides, architecture = _apply_model_overrides(
                self.model_overrides, self.model, texts or {}
            )
            check_against_model(self, architecture)
        if self.data.source == "scenes" and self.data.root:
            raise UsageError(
                f"data.root={self.data.root} is set but data.source is 'scenes' (the built-in "
                "procedural scenes, no files): add data.source=folder to train on the folder"
            )
        # augment.color holds the MultiViewAugment keywords the other augment fields don't set
        # (its **color takes the ColorAugment fields).
        colour_keys = {*inspect.signature(MultiViewAugment).parameters, *field_names(ColorAugment)}
        colour_keys -= {*field_names(AugmentConfig)}
        unknown = sorted(set(a.color) - colour_keys)
        if unknown:
            raise UsageError(
                f"unknown augment.color key(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(colour_keys))}"
            )
        return self


def check_against_model(cfg: TrainConfig, model: StellarConfig) -> None:
    """The training settings that depend on the architecture (patch size, concept tokens).

    :meth:`TrainConfig.validate` calls it for a preset architecture; the trainer calls it
    once more for the one loaded from ``init.checkpoint``.

    Raises:
        UsageError: a view size that is not a multiple of the patch size, or KoLeo with one
            concept token.
    """
    p = model.encoder.patch_size
    for key in ("global_size", "local_size"):
        size = getattr(cfg.augment, key)
        if size % p:
            raise UsageError(
                f"augment.{key}: expected a multiple of the patch size {p}, got {size}"
            )
    if cfg.objective.koleo and model.num_sparse_tokens < 2:
        raise UsageError(
            "objective.koleo spreads the concept tokens apart and needs at least 2 of them, "
            f"the model has {model.num_sparse_tokens}: set objective.koleo=false"
        )


def preset_names() -> list[str]:
    """Names of the YAML presets shipped with the package."""
    folder = resources.files("stellar") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_config(
    preset_or_path: str | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Defaults ⊕ preset (name) or YAML file ⊕ dotted ``key=value`` overrides (YAML-typed).

    Every value is checked against its field's annotation and range: a UsageError names the
    key, what it expects and the value given.
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
    return build(TrainConfig, data, texts=texts).validate(texts)


def _apply_model_overrides(
    overrides: dict[str, Any], model: str, texts: dict[str, str]
) -> tuple[dict[str, Any], StellarConfig]:
    """``model_overrides`` applied to the preset ``model``: (converted overrides, architecture).

    ``encoder`` and ``decoder`` take mappings of their own fields, merged into the preset's.
    The whole architecture is built as a :class:`StellarConfig`, so an unknown key, a wrong
    type or range, or a combination that cannot make a model fails here, before any work.
    """
    if model not in list_models():
        raise UsageError(
            f"model: expected a registered model name ({', '.join(list_models())}), got {model!r}"
        )
    if not isinstance(overrides, dict):
        raise UsageError(f"model_overrides: expected a mapping, got {overrides!r}")
    base = get_config(model).to_dict()
    built = build(StellarConfig, merge_fields(base, overrides), "model_overrides.", texts)
    sections = nested(StellarConfig)
    converted = {
        k: ({f: getattr(getattr(built, k), f) for f in v} if k in sections else getattr(built, k))
        for k, v in overrides.items()
    }
    return converted, built


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
RUN_CONFIG = "config.yaml"


def resume_config(
    out: Path, requested: TrainConfig, keys: Iterable[str] | None = None
) -> tuple[TrainConfig, list[str]]:
    """The configuration a resumed run continues with: the run's saved one (``out/config.yaml``).

    Of ``requested`` (the command line's configuration) only the values of ``keys`` (dotted;
    ``None``: every key) that differ from the saved ones count, and only those in
    :data:`RESUMABLE_KEYS` are applied. ``stop_at`` applies to the invocation that sets it, so
    it is always taken from ``requested``.

    Returns:
        (the configuration, the applied changes as ``"key old -> new"``).

    Raises:
        UsageError: ``config.yaml`` is missing or invalid, or a key outside
            :data:`RESUMABLE_KEYS` differs (the architecture included), naming the keys.
    """
    path = out / RUN_CONFIG
    if not path.is_file():
        raise UsageError(
            f"--resume takes the run's saved settings from {path}, which does not exist; "
            "drop --resume to start a fresh run"
        )
    try:
        saved = build(TrainConfig, _read_yaml(str(path)), texts={})
    except UsageError as err:
        raise UsageError(f"{path}: {err}") from None
    old, new = _flatten(saved.to_dict()), _flatten(requested.to_dict())
    wanted = set(new) if keys is None else {k for k in new if _under(k, keys)}
    differ = sorted(k for k in wanted | {"stop_at"} if k != "out" and old.get(k) != new[k])
    refused = [k for k in differ if k not in RESUMABLE_KEYS]
    if refused:
        shown = "; ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in refused)
        architecture = [k for k in refused if k == "model" or k.startswith("model_overrides")]
        why = (
            " (a changed architecture cannot load the checkpoint's weights)" if architecture else ""
        )
        raise UsageError(
            f"--resume continues {out} with its saved settings ({path}); these differ{why}: "
            f"{shown}. A resume may change only {', '.join(sorted(RESUMABLE_KEYS))}. Drop the "
            f"others, or start a new run from these weights with init.checkpoint={out}/checkpoints"
            "/last"
        )
    for key in differ:
        *sections, name = key.split(".")
        target = saved
        for section in sections:
            target = getattr(target, section)
        setattr(target, name, new[key])
    saved.out = requested.out
    return saved.validate(), [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in differ]


def existing_run_files(out: Path) -> list[Path]:
    """The files of a run in ``out`` (its config, metrics, checkpoints, TensorBoard logs)."""
    names = (RUN_CONFIG, "metrics.jsonl", "checkpoints", "tensorboard")
    return [out / n for n in names if (out / n).exists() or (out / n).is_symlink()]


def check_fresh_run(out: Path, overwrite: bool) -> list[Path]:
    """The files of the run already in ``out`` that a fresh run replaces ([] when none).

    Raises:
        UsageError: ``out`` holds a run and ``overwrite`` is False.
    """
    old = existing_run_files(out)
    if old and not overwrite:
        raise UsageError(
            f"{out} already holds a run ({', '.join(p.name for p in old)}): pass --resume "
            "(resume=True) to continue it, --overwrite (overwrite=True) to replace it, or "
            "another out= for a new run"
        )
    return old


def delete_run_files(paths: list[Path]) -> None:
    """Delete what :func:`check_fresh_run` returned (the replaced run's files)."""
    if paths:
        logger.warning("overwrite: deleting the previous run's %s", ", ".join(map(str, paths)))
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


def _under(key: str, keys: Iterable[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)
