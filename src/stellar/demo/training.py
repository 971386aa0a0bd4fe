"""The demo's settings, and training its variants: the ``cpu-demo`` recipe, the demo's budget."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

from stellar.models.stellar import STELLAR
from stellar.train.config import load_config
from stellar.train.trainer import Trainer


@dataclass
class DemoSettings:
    """Budget and sizes of one demo run (defaults: ~10 minutes on 2 CPU cores)."""

    out: str = "runs/demo"
    seed: int = 0
    steps: int | None = None
    batch_size: int | None = None
    ablation: bool = False
    eval_train: int = 2000
    eval_val: int = 500
    probe_epochs: int = 30
    seg_epochs: int = 10
    progress: bool = True
    overrides: tuple[str, ...] = ()


def resolve_budget(settings: DemoSettings) -> DemoSettings:
    """``settings`` with the preset's steps and batch size filled in where not given."""
    cfg = load_config("cpu-demo", list(settings.overrides))
    steps = settings.steps if settings.steps is not None else cfg.max_steps
    batch = settings.batch_size if settings.batch_size is not None else cfg.batch_size
    return replace(settings, steps=steps, batch_size=batch)


def demo_trainer(settings: DemoSettings, name: str, extra: list[str]) -> Trainer:
    """The ``cpu-demo`` trainer of one variant, writing to ``<out>/train-<name>``; ``settings``
    have their budget resolved (:func:`resolve_budget`)."""
    overrides = [
        f"out={Path(settings.out) / f'train-{name}'}",
        f"seed={settings.seed}",
        f"data.seed={settings.seed}",
        f"progress={str(settings.progress).lower()}",
        *settings.overrides,
        *extra,
        f"max_steps={settings.steps}",
        f"batch_size={settings.batch_size}",
    ]
    return Trainer(load_config("cpu-demo", overrides))


def train_variant(
    settings: DemoSettings, name: str, extra: list[str]
) -> tuple[STELLAR, STELLAR, Path]:
    """Train one variant; returns (trained model, its random initialisation, run folder)."""
    trainer = demo_trainer(settings, name, extra)
    initial = copy.deepcopy(trainer.model)
    trainer.train(overwrite=True)  # the demo owns its run folders: a rerun replaces them
    return trainer.model, initial, Path(trainer.cfg.out)
