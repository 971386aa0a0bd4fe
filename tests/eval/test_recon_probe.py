"""Reconstruction probe: a fresh decoder learns, metrics and figure, ``stellar eval recon``."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stellar import create_stellar
from stellar.cli import main
from stellar.data.folder import EvalImages
from stellar.eval.encoder import extract_features
from stellar.eval.probe import predict
from stellar.eval.recon_probe import (
    SCHEDULE,
    fresh_decoder,
    image_metrics,
    psnr,
    ssim,
    train_recon_probe,
)

SMALL_DECODER = dict(
    decoder={"hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128},
)


def _images(root: Path, n: int, seed: int = 0) -> Path:
    """Two-colour images with a random split line (learnable, not constant)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = np.zeros((64, 64, 3), np.uint8)
        cut = int(rng.integers(16, 48))
        a[:, :cut] = rng.integers(0, 255, 3)
        a[:, cut:] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(root / f"im{i}.png")
    return root


@pytest.fixture(scope="module")
def small_model():
    return create_stellar("stellar-tiny", **SMALL_DECODER).eval()


def _decoded(decoder, feats):
    """The probe's reconstructions of (N, 64, d) features, as ``stellar eval recon`` makes them."""
    return predict(decoder, feats, 64, "cpu", lambda x: decoder(x, (8, 8))["x_hat"].clamp(0, 1))


def test_training_improves_reconstruction(small_model, tmp_path) -> None:
    data = EvalImages(_images(tmp_path / "d", 8), 64, resize_ratio=1.0)
    out = extract_features(small_model, data, ["lowrank"], progress=False, keep_images=True)
    feats, images = out["lowrank"], out["images"]
    assert feats.shape == (8, 64, 96) and images.dtype == torch.uint8
    decoder = fresh_decoder(small_model, depth=1, seed=0)
    assert decoder.proj.out_features == 64 and len(decoder.blocks) == 1
    before = psnr(_decoded(decoder, feats), images.float() / 255).mean()
    history = train_recon_probe(
        decoder,
        feats,
        images,
        (8, 8),
        replace(SCHEDULE, epochs=6, lr=5e-3, batch_size=8),
        progress=False,
    )
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    after = psnr(_decoded(decoder, feats), images.float() / 255).mean()
    assert after.item() > before.item() + 3.0
    # the same seed gives the same fresh decoder
    twin = fresh_decoder(small_model, depth=1, seed=0)
    assert torch.equal(twin.proj.weight, fresh_decoder(small_model, depth=1, seed=0).proj.weight)


def test_psnr_matches_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 27, generator=g)
    y = (x + 0.1 * torch.randn(3, 3, 32, 27, generator=g)).clamp(0, 1)
    got = psnr(x, y)
    for i in range(x.shape[0]):
        mse = np.mean((x[i].double().numpy() - y[i].double().numpy()) ** 2)
        assert got[i].item() == pytest.approx(10 * math.log10(1.0 / mse), rel=1e-5)
    assert (psnr(x, x) == 100.0).all()  # capped, so one perfect image keeps a finite mean


@pytest.mark.parametrize("shape", [(3, 3, 32, 27), (2, 1, 11, 11), (1, 3, 64, 48)])
def test_ssim_matches_skimage(shape):
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    x = torch.rand(*shape, generator=g)
    y = (x + 0.1 * torch.randn(*shape, generator=g)).clamp(0, 1)
    got = ssim(x, y)
    assert got.shape == (shape[0],)
    for i in range(shape[0]):
        ref = structural_similarity(
            x[i].double().numpy(),
            y[i].double().numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=0,
        )
        assert got[i].item() == pytest.approx(ref, abs=1e-4)
    torch.testing.assert_close(ssim(x.double(), y.double()), got.double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(ssim(x, x), torch.ones(shape[0]))
    torch.testing.assert_close(ssim(x, y), ssim(y, x))


def test_image_metrics() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 24, 24, generator=gen)
    noisy = (target + 0.05 * torch.randn(3, 3, 24, 24, generator=gen)).clamp(0, 1)
    m = image_metrics(noisy, (target * 255).round().to(torch.uint8))
    assert m["lpips"] is None and m["rfid"] is None
    assert 20 < m["psnr"] < 40 and 0 < m["ssim"] < 1


def test_recon_command(tmp_path, capsys) -> None:
    ckpt = create_stellar("stellar-tiny", **SMALL_DECODER).save_pretrained(tmp_path / "ckpt")
    train, val = _images(tmp_path / "train", 6), _images(tmp_path / "val", 3, seed=1)
    out = tmp_path / "out"
    argv = ["eval", "recon", "--model", str(ckpt), "--train", str(train), "--val", str(val)]
    small = ["--decoder-depth", "1", "--epochs", "3", "--lr", "1e-3", "--no-progress"]
    assert main([*argv, *small, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    (row,) = m["rows"]
    assert row["key"] == "lowrank" and row["num_train"] == 6 and row["num_val"] == 3
    assert 0 < row["ssim"] < 1
    assert row["lpips"] is None and row["rfid"] is None and len(row["history"]) == 3
    assert (
        "--lpips-vgg" in m["unavailable"]["lpips"] and "--fid-weights" in m["unavailable"]["rfid"]
    )
    grid = np.asarray(Image.open(row["grid_png"]))  # 3 validation images over their recons
    assert grid.shape == (2 + 2 * 66, 2 + 3 * 66, 3) and row["psnr"] > 0
    assert "PSNR dB" in capsys.readouterr().out
    with pytest.raises(ValueError, match="both --lpips-vgg and --lpips-weights"):
        main([*argv, "--lpips-vgg", str(ckpt), "--out", str(out)])
    with pytest.raises(FileNotFoundError, match="--fid-weights: expected a weights file.*missing"):
        main([*argv, "--fid-weights", str(tmp_path / "missing.pth"), "--out", str(out)])


def test_recon_on_sample_photos(samples_dir, tmp_path) -> None:
    ckpt = create_stellar("stellar-tiny", **SMALL_DECODER).save_pretrained(tmp_path / "ckpt")
    photos = sorted((samples_dir / "images224").glob("*.jpg"))[:8]
    for split, chunk in (("train", photos[:6]), ("val", photos[6:])):
        (tmp_path / split).mkdir()
        for p in chunk:
            os.symlink(p, tmp_path / split / p.name)
    out = tmp_path / "out"
    argv = ["eval", "recon", "--model", str(ckpt), "--train", str(tmp_path / "train")]
    argv += ["--val", str(tmp_path / "val"), "--key", "dense", "--decoder-depth", "1"]
    assert main([*argv, "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    (row,) = json.loads((out / "metrics.json").read_text())["rows"]
    assert row["key"] == "dense" and row["num_val"] == 2 and np.isfinite(row["psnr"])
