"""The EMA teacher: a frozen copy of the model moved towards it after each optimizer step."""

from __future__ import annotations

import copy
import math

import torch

from stellar.models.stellar import STELLAR


def make_teacher(model: STELLAR) -> STELLAR:
    """A frozen deep copy (the tokenizer, if any, is shared, not copied)."""
    tokenizer, model.tokenizer = model.tokenizer, None
    try:
        teacher = copy.deepcopy(model)
    finally:
        model.tokenizer = tokenizer
    return teacher.requires_grad_(False).eval()


@torch.no_grad()
def update_teacher(teacher: STELLAR, student: STELLAR, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, one fused foreach op."""
    # the teacher is the student's deep copy without the tokenizer: the same parameters, in order
    t = list(teacher.parameters())
    s = [p.detach() for n, p in student.named_parameters() if not n.startswith("tokenizer.")]
    torch._foreach_lerp_(t, s, 1.0 - momentum)


def ema_momentum(step: int, total: int, start: float, final: float | None) -> float:
    """Constant ``start``, or cosine-annealed from ``start`` to ``final`` over training."""
    if final is None:
        return start
    progress = min(1.0, step / max(1, total))
    return final - (final - start) * 0.5 * (1 + math.cos(math.pi * progress))
