"""stellar.runtime: the one device picker and autocast helper."""

from __future__ import annotations

import contextlib

import pytest
import torch

from stellar.errors import UsageError
from stellar.runtime import autocast, pick_device, precision_choice


def test_device_and_autocast_choices() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert pick_device("cuda", local_rank=3) == torch.device("cuda", 3)  # this rank's GPU
    else:
        with pytest.raises(UsageError, match="has no cuda"):
            pick_device("cuda")
    for name in ("mps", "meta"):  # no such device here (meta holds no data to compute on)
        if not (name == "mps" and torch.mps.is_available()):
            with pytest.raises(UsageError, match=f"has no {name}"):
                pick_device(name)
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="expected a device"):
        pick_device("gpu")
    cpu = torch.device("cpu")
    assert precision_choice("bf16", cpu)[0] is torch.bfloat16
    assert precision_choice("fp32", cpu)[0] is None
    with pytest.raises(ValueError, match="precision"):
        precision_choice("fp8", cpu)


@pytest.mark.parametrize(
    "device,feature,cuda_native,expected,why",
    [
        ("cpu", "AVX512-BF16", None, torch.bfloat16, "the CPU has AVX512-BF16"),
        ("cpu", None, None, None, "no native bf16 on this cpu"),
        ("cuda", None, True, torch.bfloat16, "the GPU supports bf16"),
        ("cuda", None, False, None, "this GPU has no native bf16"),  # emulated bf16 is slow
        ("meta", "AMX", None, None, "no native bf16 on this meta"),
    ],
)
def test_auto_precision_takes_bf16_only_where_it_is_native(
    monkeypatch, device, feature, cuda_native, expected, why
) -> None:
    import stellar.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_bf16_feature", lambda: feature)
    if cuda_native is not None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(runtime, "_cuda_native_bf16", lambda device: cuda_native)
    dtype, reason = runtime.precision_choice("auto", torch.device(device))
    assert dtype is expected and why in reason


def test_a_precision_block_sets_what_auto_means() -> None:
    import stellar.runtime as runtime

    cpu = torch.device("cpu")
    with runtime.precision("fp32"):
        assert isinstance(autocast(cpu), contextlib.nullcontext)  # exact fp32 encoding
        with runtime.precision("bf16"), autocast(cpu):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
        assert isinstance(autocast(cpu), contextlib.nullcontext)  # restored on exit
    with pytest.raises(ValueError, match="precision"), runtime.precision("fp16"):
        pass
