"""Pretraining: :func:`train` is what ``stellar train`` runs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from stellar.errors import UsageError
from stellar.outputs import output_folder
from stellar.runtime import setup, teardown
from stellar.train.config import (
    DEFAULT_PRESET,
    TrainConfig,
    load_config,
    parse_overrides,
    read_run_config,
    read_yaml,
    resume_changes,
)
from stellar.train.trainer import Trainer

logger = logging.getLogger(__name__)


class TrainResult(NamedTuple):
    """What :func:`train` returns."""

    out: Path  # the run folder; ``load_stellar(out)`` loads its latest checkpoint
    metrics: dict[str, float]  # the last logged step's scalars ({} if nothing was left to do)
    model: nn.Module  # the trained STELLAR (``purpose="pretrain"``)

    def __repr__(self) -> str:  # the model's own repr is its whole module tree
        model = type(self.model).__name__
        return f"TrainResult(out={self.out!r}, metrics={self.metrics!r}, model={model})"


def train(
    config: str | Path | Mapping[str, Any] | TrainConfig | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    resume: bool = False,
    overwrite: bool = False,
    **settings: Any,
) -> TrainResult:
    """Pretrain STELLAR into the run folder ``out`` (under ``torchrun``: on every rank).

    ``config`` is a preset name, a YAML file, a mapping or a :class:`TrainConfig` (default: the
    ``cpu-smoke`` preset, or with ``resume`` the run's saved ``config.yaml``); ``overrides``
    (``key=value`` texts or a mapping of dotted keys) and keyword ``settings`` (``__`` for the
    dot: ``optim__lr=1e-3``) go over it. ``resume`` continues ``out/checkpoints/last`` exactly
    (only :data:`~stellar.train.config.RESUMABLE_KEYS` may differ); ``overwrite`` starts afresh
    in an ``out`` that holds a run. Bad settings, a refused change and a folder in use or
    holding a run are one :class:`~stellar.errors.UsageError` each.
    """
    if resume and overwrite:
        raise UsageError("--resume continues the run in out=, --overwrite replaces it: pick one")
    changes = parse_overrides(overrides)
    changes.update({k.replace("__", "."): v for k, v in settings.items()})
    if resume and config is None:  # the saved settings, with only the overrides changed
        out = changes.get("out", read_yaml(DEFAULT_PRESET)["out"])
        config = {**read_run_config(out), "stop_at": None}  # stop_at is this invocation's
    cfg = load_config(config or DEFAULT_PRESET, changes)
    if resume:  # early, before the data is scanned; the trainer checks against the checkpoint
        resume_changes(read_run_config(cfg.out), cfg)
    dist = setup()
    try:
        # one run per folder: rank 0 holds the lock for the whole run (ranks share the folder)
        with (
            output_folder(cfg.out, "stellar train", "out=", [cfg.data.root])
            if dist.is_main
            else contextlib.nullcontext()
        ):
            trainer = Trainer(cfg, dist, resume)
            metrics = trainer.train(overwrite=overwrite)
    finally:
        teardown()
    return TrainResult(Path(cfg.out), metrics, trainer.model)
