"""Plain-ViT baselines (HF ViT / original MAE files) and their rows in ``stellar eval``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stellar.cli import main
from stellar.eval.baseline import ViTBaseline, load_baseline, parse_baseline
from stellar.models.config import EncoderConfig, StellarConfig

transformers = pytest.importorskip("transformers")

TINY_VIT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=64,
    patch_size=8,
)


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1)
    model = transformers.ViTModel(transformers.ViTConfig(**TINY_VIT)).eval()
    with torch.no_grad():  # move every weight off its init so that a swap cannot hide
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("vit") / "hf"
    model.save_pretrained(path)
    return path, model


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for name, rgb in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.clip(np.array(rgb) + rng.integers(-20, 20, (32, 32, 3)), 0, 255)
                Image.fromarray(a.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def test_hf_vit_baseline_matches_transformers(hf_vit) -> None:
    path, hf = hf_vit
    base = load_baseline(f"vit:{path}")
    assert base.name == "ViT (hf)" and base.config.encoder.num_attention_heads == 2
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = base.encode(images)
        ref = hf(pixel_values=(images - base.pixel_mean) / base.pixel_std).last_hidden_state
    assert set(out) == {"cls", "dense"} and out["dense"].shape == (2, 64, 32)
    torch.testing.assert_close(torch.cat([out["cls"], out["dense"]], 1), ref, rtol=1e-5, atol=1e-5)


# (width, heads): ViT-H is 1280 wide with 16 heads of 80, not 1280 / 64 = 20
@pytest.mark.parametrize(("width", "heads"), [(96, 4), (1280, 16)])
def test_original_mae_file(tmp_path, width, heads) -> None:
    enc = EncoderConfig(
        hidden_size=width,
        num_hidden_layers=1,
        num_attention_heads=heads,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        layer_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    source = ViTBaseline(StellarConfig(encoder=enc)).eval()
    with torch.no_grad():  # attention weights large enough that a wrong head split shows
        for name, p in source.encoder.named_parameters():
            if "attn" in name:
                p.normal_(0, 0.5)
    state = {
        k.replace("patch_embed.", "patch_embed.proj."): v
        for k, v in source.encoder.state_dict().items()
    }
    state["mask_token"] = torch.zeros(1, 1, width)  # MAE pretraining files carry it; unused
    torch.save({"model": state}, tmp_path / "mae.pth")
    base = load_baseline(f"mae:{tmp_path / 'mae.pth'}")
    # no config: the standard ViT's heads for the width, and timm's LayerNorm eps 1e-6
    assert base.config.encoder.num_attention_heads == heads
    assert base.config.encoder.layer_norm_eps == 1e-6 and base.name.startswith("MAE")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(base.encode(images)["dense"], source.encode(images)["dense"])


def test_hf_preprocessor_mean_and_std_are_used(hf_vit, tmp_path) -> None:
    path, hf = hf_vit
    copy = tmp_path / "google-style"
    shutil.copytree(path, copy)
    pre = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    (copy / "preprocessor_config.json").write_text(json.dumps(pre))
    base = load_baseline(f"vit:{copy}")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = base.encode(images)["dense"]
        ref = hf(pixel_values=(images - 0.5) / 0.5).last_hidden_state[:, 1:]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    (copy / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5]}))
    with pytest.raises(ValueError, match="image_mean and image_std"):
        load_baseline(f"vit:{copy}")


def test_parse_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="mae:PATH or vit:PATH"):
        parse_baseline("dino:x")
    with pytest.raises(ValueError, match="does not exist"):
        parse_baseline(f"mae:{tmp_path / 'nothing'}")


def test_baseline_rows(hf_vit, tmp_path) -> None:
    path, _ = hf_vit
    data = _folder(tmp_path / "data")
    argv = ["eval", "knn", "--model", "stellar-tiny", "--baseline", f"vit:{path}"]
    argv += ["--train", str(data / "train"), "--val", str(data / "val"), "--no-progress"]
    assert main([*argv, "--k", "3", "--out", str(tmp_path / "k")]) == 0
    rows = json.loads((tmp_path / "k" / "metrics.json").read_text())["rows"]
    assert [(r["kind"], r["key"]) for r in rows] == [("stellar", "sparse"), ("baseline", "dense")]
    assert rows[1]["model"] == "ViT (hf)" and 0 <= rows[1]["top1"] <= 1
    assert main([*argv, "--key", "cls", "--out", str(tmp_path / "c")]) == 0
    rows = json.loads((tmp_path / "c" / "metrics.json").read_text())["rows"]
    assert [r["key"] for r in rows] == ["cls", "cls"]

    inv = ["eval", "invariance", "--model", "stellar-tiny", "--baseline", f"vit:{path}"]
    inv += ["--data", str(data / "val"), "--crops", "2", "--no-progress"]
    assert main([*inv, "--out", str(tmp_path / "i")]) == 0
    stellar, vit = json.loads((tmp_path / "i" / "metrics.json").read_text())["rows"]
    assert vit["distances"]["sparse_matched"] is None and vit["equivariance"] == {}
    assert vit["distances"]["cls"]["mean"] >= 0 and stellar["equivariance"]
