"""MaskGIT-VQGAN tokenizer: parity with the reference fixtures, strict loading, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stellar.models.vqgan import MaskGITVQGAN, infer_vqgan_config, load_vqgan

SMALL = {
    "hidden_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "z_channels": 32,
    "codebook_size": 64,
}


def _fixture_config(small_dir: Path) -> dict:
    """The reference config without the entries the architecture fixes or does not use."""
    config = json.loads((small_dir / "config.json").read_text())
    assert config.pop("codebook_dim") == config["z_channels"] and config.pop("num_channels") == 3
    del config["resolution"]  # metadata only
    return config


def _random_small() -> MaskGITVQGAN:
    """Small tokenizer whose every parameter (GroupNorm affine included) is random."""
    model = MaskGITVQGAN(**SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.ndim == 1 else 0.0))
    return model


@pytest.fixture
def small_dir(reference_dir: Path) -> Path:
    return reference_dir / "maskgit-vqgan-small"


@pytest.fixture
def small_io(small_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(small_dir / "io.safetensors"))


def test_parity_with_reference(small_dir: Path, small_io: dict[str, torch.Tensor]) -> None:
    model = load_vqgan(small_dir / "weights.safetensors")
    assert infer_vqgan_config(model.state_dict()) == _fixture_config(small_dir)
    images = small_io["input.image"]

    feats = model.encode_features(images)
    torch.testing.assert_close(feats, small_io["encode.hidden_states"], atol=1e-5, rtol=0)
    codes = model.encode(images)
    assert codes.dtype == torch.int64
    assert torch.equal(codes, small_io["encode.codes"])

    decoded = model.decode(small_io["encode.codes"])
    torch.testing.assert_close(decoded, small_io["decode.image"], atol=1e-5, rtol=0)


def test_state_dict_matches_released_manifest(reference_dir: Path) -> None:
    manifest = json.loads((reference_dir / "maskgit_vqgan_f16_256_keys.json").read_text())
    with torch.device("meta"):
        model = MaskGITVQGAN()
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == manifest
    assert infer_vqgan_config(model.state_dict()) == {
        "hidden_channels": 128,
        "channel_mult": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
        "z_channels": 256,
        "codebook_size": 1024,
    }


def test_small_state_dict_matches_fixture_weights(small_dir: Path) -> None:
    weights = load_file(str(small_dir / "weights.safetensors"))
    with torch.device("meta"):
        model = MaskGITVQGAN(**_fixture_config(small_dir))
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in weights.items()
    }


def test_bin_round_trip(tmp_path: Path) -> None:
    model = _random_small()
    path = tmp_path / "maskgit-vqgan-imagenet-f16-256.bin"
    torch.save(model.state_dict(), path)
    loaded = load_vqgan(path)

    assert infer_vqgan_config(loaded.state_dict()) == SMALL
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.encode_features(images), model.encode_features(images))
    codes = model.encode(images)
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_codes_ignore_a_callers_bf16_autocast() -> None:
    # training steps run under autocast; the codes they learn from must be the fp32 ones
    model = _random_small()
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    codes = model.encode(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.encode(images), codes)
        assert model.encode_features(images).dtype == torch.float32


@pytest.mark.parametrize(
    ("edit", "named", "what"),
    [
        ("extra", "encoder.extra.weight", "unexpected"),
        ("missing", "decoder.up.1.upsample_conv.bias", "missing"),
        ("misshapen", "decoder.mid.0.conv2.weight", "wrong shapes"),
    ],
)
def test_strict_loading_names_bad_key(tmp_path: Path, edit: str, named: str, what: str) -> None:
    state = dict(_random_small().state_dict())
    if edit == "extra":
        state[named] = torch.zeros(3)
    elif edit == "missing":
        del state[named]
    else:
        state[named] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "bad.bin"
    torch.save(state, path)
    with pytest.raises(ValueError, match=what) as err:
        load_vqgan(path)
    assert named in str(err.value)


def test_missing_file_is_not_downloaded(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "maskgit-vqgan-imagenet-f16-256.bin"
    with pytest.raises(FileNotFoundError, match="never downloaded") as err:
        load_vqgan(path)
    assert str(path) in str(err.value)


def test_frozen_and_stays_in_eval() -> None:
    model = MaskGITVQGAN(**SMALL)
    parent = torch.nn.Sequential(model)
    parent.train()
    assert not model.training
    assert all(not m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())


def test_quantize_is_nearest_codebook_entry() -> None:
    model = _random_small()
    book = model.quantize.embedding.weight
    # Features that sit exactly on codebook entries quantise to those entries.
    codes = torch.randint(0, SMALL["codebook_size"], (2, 16))
    z = book[codes].reshape(2, 4, 4, -1).permute(0, 3, 1, 2)
    assert torch.equal(model.quantize(z), codes)
    # Arbitrary features agree with a brute-force float64 nearest neighbour.
    z = torch.randn(3, SMALL["z_channels"], 5, 6)
    flat = z.permute(0, 2, 3, 1).reshape(-1, SMALL["z_channels"]).double()
    expected = ((flat[:, None, :] - book.double()[None]) ** 2).sum(-1).argmin(1).reshape(3, 30)
    assert torch.equal(model.quantize(z), expected)


def test_shapes_and_non_square_encode() -> None:
    model = _random_small()
    images = torch.rand(2, 3, 16, 24)
    assert model.encode_features(images).shape == (2, SMALL["z_channels"], 8, 12)
    assert model.encode(images).shape == (2, 96)
    codes = torch.randint(0, SMALL["codebook_size"], (2, 9))
    out = model.decode(codes)
    assert out.shape == (2, 3, 6, 6)
    assert out.min() >= 0 and out.max() <= 1


def test_non_square_codes_decode_on_their_grid() -> None:
    model = _random_small()
    codes = model.encode(torch.rand(1, 3, 16, 24))  # an 8 x 12 code grid (96 codes)
    out = model.decode(codes, grid=(8, 12))
    assert out.shape == (1, 3, 16, 24)
    # row-major: decoding the grid's left half alone gives the left half's codes' image size
    assert model.decode(codes.view(1, 8, 12)[:, :, :6].reshape(1, 48), grid=(8, 6)).shape == (
        1,
        3,
        16,
        12,
    )
