"""The EMA teacher: a frozen copy of the model moved towards it after each optimizer step."""

from __future__ import annotations

import copy

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
    t = dict(teacher.named_parameters())
    s = {n: p.detach() for n, p in student.named_parameters() if not n.startswith("tokenizer.")}
    if t.keys() != s.keys():
        raise ValueError("teacher and student have different parameters")
    names = sorted(t)
    torch._foreach_lerp_([t[n] for n in names], [s[n] for n in names], 1.0 - momentum)
