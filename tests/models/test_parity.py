"""Golden-tensor parity with the official model code (stellar-tiny, fp32, 1e-5)."""

from __future__ import annotations

import pytest
import torch

from stellar import load_stellar

ATOL = 1e-5
CUDA_ATOL = 1e-4  # other kernels (TF32 off)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def tiny_model(reference_dir):
    return load_stellar(reference_dir / "stellar-tiny", purpose="reconstruct")


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.float().cpu(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize(
    "prefix,image", [("encode", "input.image"), ("encode_hires", "input.image_hires")]
)
def test_encode_matches_reference(tiny_model, tiny_io, prefix, image):
    with torch.no_grad():
        out = tiny_model.encode(tiny_io[image])
    keys = [k.split(".", 1)[1] for k in tiny_io if k.startswith(prefix + ".")]
    assert {"cls", "dense", "sparse", "spatial", "lowrank"} <= set(keys)
    for key in keys:
        _close(out[key], tiny_io[f"{prefix}.{key}"])


@CUDA
def test_encode_on_cuda_matches_reference(tiny_model, tiny_io, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    with torch.no_grad():
        out = tiny_model.cuda().encode(tiny_io["input.image"].cuda())
    for key in ("cls", "dense", "sparse", "spatial", "lowrank"):
        _close(out[key], tiny_io[f"encode.{key}"], CUDA_ATOL)


def test_decode_matches_reference(tiny_model, tiny_io):
    with torch.no_grad():
        rec = tiny_model.reconstruct(tiny_model.encode(tiny_io["input.image"]))
    _close(rec["decoder_output"], tiny_io["decode.decoder_output"])
    _close(rec["x_hat"], tiny_io["decode.x_hat"])
    mse = torch.nn.functional.mse_loss(rec["x_hat"], tiny_io["input.image"])
    _close(mse.reshape(1), tiny_io["decode.mse"])
    assert rec["reconstruction"].min() >= 0 and rec["reconstruction"].max() <= 1


def test_reconstruct_from_sparse_and_spatial(tiny_model, tiny_io):
    with torch.no_grad():
        out = tiny_model.encode(tiny_io["input.image"])
        a = tiny_model.reconstruct(out)["x_hat"]
        b = tiny_model.reconstruct(out["sparse"], out["spatial"])["x_hat"]
    torch.testing.assert_close(a, b)


def test_masked_encoding_matches_reference(tiny_model, tiny_io):
    with torch.no_grad():
        out = tiny_model.encode_masked(tiny_io["input.image"], tiny_io["masked.keep_idx"])
    _close(out["cls"], tiny_io["masked.cls"])
    _close(out["sparse"], tiny_io["masked.sparse"])
    assert out["dense"].shape[1] == tiny_io["masked.keep_idx"].shape[1]
