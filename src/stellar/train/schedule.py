"""Learning-rate and EMA-momentum schedules (pure functions of the step)."""

from __future__ import annotations

import math


def cosine_lr(step: int, total: int, base: float, warmup: float, floor: float) -> float:
    """Linear warm-up over ``warmup`` (fraction of ``total``) then cosine decay to ``floor``."""
    warmup_steps = int(round(warmup * total))
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_momentum(step: int, total: int, start: float, final: float | None) -> float:
    """Constant ``start``, or cosine-annealed from ``start`` to ``final`` over training."""
    if final is None:
        return start
    progress = min(1.0, step / max(1, total))
    return final - (final - start) * 0.5 * (1 + math.cos(math.pi * progress))
