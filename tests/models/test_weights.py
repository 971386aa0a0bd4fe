"""The one weights reader and strict loader (stellar.checkpoint.weights) and its users."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from stellar.checkpoint.weights import check_state, load_strict, read_state_dict


def _module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))


@pytest.mark.parametrize("suffix", [".safetensors", ".bin", ".pth", ""])
@pytest.mark.parametrize("fmt", ["safetensors", "pickle"])
def test_format_is_told_by_content_not_suffix(tmp_path, fmt, suffix):
    state = _module().state_dict()
    path = tmp_path / f"weights{suffix}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    read, _ = read_state_dict(path)
    assert set(read) == set(state)
    assert all(torch.equal(read[k], state[k]) for k in state)


def test_strict_load_names_missing_unexpected_and_wrong_shape_keys():
    target = _module()
    state = dict(_module().state_dict())
    del state["1.bias"]
    state["2.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(4, 5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_strict(target, state, source="w.bin", target="the test net")
    text = str(err.value)
    assert text.startswith("w.bin does not fit the test net")
    assert "missing keys: 1.bias" in text and "unexpected keys: 2.weight" in text
    assert "wrong shapes: 0.weight (file (4, 5), model (4, 3))" in text
    # checked before anything is copied
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_known_unused_and_optional_keys():
    target = _module()
    state = dict(_module().state_dict(), **{"head.weight": torch.zeros(2), "pooler": torch.ones(1)})
    del state["1.bias"]
    with pytest.raises(ValueError, match="head.weight"):
        load_strict(target, state, source="f", unused=("pooler",), may_be_missing=("1.",))
    load_strict(target, state, source="f", unused=("head.", "pooler"), may_be_missing=("1.",))
    assert torch.equal(target[0].weight, state["0.weight"])


def test_non_finite_weights_are_refused_by_name():
    state = dict(_module().state_dict())
    state["0.bias"] = torch.tensor([0.0, float("nan"), 1.0, 2.0])
    with pytest.raises(ValueError, match=r"NaN or infinite.*0\.bias"):
        load_strict(_module(), state, source="diverged.safetensors")
    steps = {"steps": torch.tensor([1, 2])}  # ints are not checked
    assert check_state({"steps": (2,)}, steps, source="s", target="t") == steps


def test_lpips_and_fid_read_by_content(tmp_path):
    """A pickle named .safetensors loads (both loaders used to go by the suffix)."""
    from stellar.eval.fid import FIDInceptionV3, load_fid_inception
    from stellar.eval.lpips import LPIPS, load_lpips

    lpips = LPIPS()
    torch.save(lpips.net.state_dict(), tmp_path / "vgg.safetensors")
    lins = {k: v for k, v in lpips.state_dict().items() if k.startswith("lin")}
    save_file(lins, str(tmp_path / "lins.pth"))
    loaded = load_lpips(tmp_path / "vgg.safetensors", tmp_path / "lins.pth")
    assert torch.equal(loaded.lin2.model[1].weight, lins["lin2.model.1.weight"])
    torch.save(FIDInceptionV3().state_dict(), tmp_path / "inception.safetensors")
    load_fid_inception(tmp_path / "inception.safetensors")
