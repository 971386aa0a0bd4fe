"""Precision: what ``precision=auto`` picks, and a bf16 step that tracks the fp32 one."""

from __future__ import annotations

import copy

import pytest
import torch

from stellar import create_stellar
from stellar.losses.objective import ObjectiveConfig, StellarObjective
from stellar.runtime import cpu_bf16_feature, precision_choice

# bf16 keeps 8 bits of mantissa (~0.4 % per rounding); the fp32 islands (factorization
# softmax, Sinkhorn-Knopp, KoLeo, the OT matcher, the prototype logits) keep every term within
# 2 % of fp32 over the steps below (measured: at most 0.6 %).
RELATIVE_TOLERANCE = 0.02


def test_auto_takes_bf16_only_where_the_cpu_computes_it_natively():
    cpu = torch.device("cpu")
    dtype, why = precision_choice("auto", cpu)
    feature = cpu_bf16_feature()
    assert dtype == (torch.bfloat16 if feature else None)
    assert (feature or "no native bf16") in why
    assert precision_choice("fp32", cpu)[0] is None
    assert precision_choice("bf16", cpu)[0] is torch.bfloat16
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        precision_choice("fp16", cpu)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _batch(device: str, b: int = 2, views: int = 2, local: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(b, 3, 64, 64, generator=g),
        "masked_views": torch.rand(b * views, 3, 64, 64, generator=g),
        "keep_idx": torch.stack([torch.randperm(64, generator=g)[:16] for _ in range(b * views)]),
        "local_views": torch.rand(b * local, 3, 32, 32, generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def _history(model, bf16: bool, device: str, steps: int = 3) -> list[dict[str, float]]:
    model = copy.deepcopy(model).to(device)
    objective = StellarObjective(model, ObjectiveConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, history = _batch(device), []
    for _ in range(steps):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            total, terms = objective(batch)
        total.backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append({"loss": total.item(), **{k: v.item() for k, v in terms.items()}})
    return history


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_step_losses_track_fp32_on_the_same_batch(device):
    model = create_stellar("stellar-tiny", purpose="pretrain").requires_grad_(True).train()
    fp32, bf16 = _history(model, False, device), _history(model, True, device)
    for step, (ref, low) in enumerate(zip(fp32, bf16, strict=True)):
        assert ref.keys() == low.keys()
        for name in ref:
            error = abs(low[name] - ref[name])
            assert error <= RELATIVE_TOLERANCE * abs(ref[name]) + 1e-3, (step, name, ref, low)
