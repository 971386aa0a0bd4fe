"""stellar.runtime: the one device picker and autocast helper."""

from __future__ import annotations

import contextlib

import pytest
import torch

from stellar.errors import UsageError
from stellar.runtime import autocast, autocast_dtype, cpu_bf16_feature, pick_device


def test_device_and_autocast_choices() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda", local_rank=3) == torch.device("cuda", 3)  # this rank's GPU
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="expected a device"):
        pick_device("gpu")
    cpu = torch.device("cpu")
    native = cpu_bf16_feature() is not None  # auto: bf16 only where the CPU computes it
    assert autocast_dtype("auto", cpu) is (torch.bfloat16 if native else None)
    assert autocast_dtype("bf16", cpu) is torch.bfloat16 and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert isinstance(autocast(cpu, "fp32"), contextlib.nullcontext)
    with autocast(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype("fp8", cpu)
