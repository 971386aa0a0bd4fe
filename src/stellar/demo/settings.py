"""The budget and sizes of one ``stellar demo`` run."""

from __future__ import annotations

from dataclasses import dataclass


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
    photos: str | None = None
    progress: bool = True
    overrides: tuple[str, ...] = ()
