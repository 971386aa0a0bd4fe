"""Initialising STELLAR's encoder from MAE / HF ViT weights (HF, 4.x, original ``.pth``)."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from stellar import create_stellar
from stellar.checkpoint.mae import init_encoder_from_mae, load_mae_weights

transformers = pytest.importorskip("transformers")

TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    image_size=32,
    patch_size=8,
    layer_norm_eps=1e-12,
)
MAE_DECODER = dict(
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=64,
    mask_ratio=0.0,
)


def _perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every parameter off its init (LayerNorms ~1, biases ~0 would hide swaps)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return module.eval()


def _vit(seed: int = 0) -> transformers.ViTModel:
    return _perturb(transformers.ViTModel(transformers.ViTConfig(**TINY)), seed)


def _mae(cls_name: str = "ViTMAEModel", seed: int = 1) -> torch.nn.Module:
    cls = getattr(transformers, cls_name)
    return _perturb(cls(transformers.ViTMAEConfig(**TINY, **MAE_DECODER)), seed)


def read_mae_encoder(path) -> dict[str, torch.Tensor]:
    return load_mae_weights(path).tensors


def _stellar(image_size: int = 32, **changes):
    enc = TINY | {"image_size": image_size} | changes
    return create_stellar("stellar-tiny", encoder=enc)


def _images(size: int = 32) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(5))


def _to_v4(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5.x ViT block names -> 4.x, written independently of the library."""
    parts = {
        "attention.q_proj": "attention.attention.query",
        "attention.k_proj": "attention.attention.key",
        "attention.v_proj": "attention.attention.value",
        "attention.o_proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    out = {}
    for key, value in state.items():
        m = re.match(r"^(vit\.|)layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m:
            prefix, i, inner, kind = m.groups()
            key = f"{prefix}encoder.layer.{i}.{parts.get(inner, inner)}.{kind}"
        out[key] = value
    return out


def _to_original(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """An HF 5.x ViT(MAE) backbone in the facebookresearch/mae layout, plus a fake decoder."""
    s = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    out = {
        "cls_token": s["embeddings.cls_token"],
        "pos_embed": s["embeddings.position_embeddings"],
        "patch_embed.proj.weight": s["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": s["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": s["layernorm.weight"],
        "norm.bias": s["layernorm.bias"],
    }
    depth = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("layers."))
    for i in range(depth):
        hf, ours = f"layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{ours}norm1.{kind}"] = s[f"{hf}layernorm_before.{kind}"]
            out[f"{ours}attn.qkv.{kind}"] = torch.cat(
                [s[f"{hf}attention.{n}_proj.{kind}"] for n in "qkv"], dim=0
            )
            out[f"{ours}attn.proj.{kind}"] = s[f"{hf}attention.o_proj.{kind}"]
            out[f"{ours}norm2.{kind}"] = s[f"{hf}layernorm_after.{kind}"]
            out[f"{ours}mlp.fc1.{kind}"] = s[f"{hf}mlp.fc1.{kind}"]
            out[f"{ours}mlp.fc2.{kind}"] = s[f"{hf}mlp.fc2.{kind}"]
    d = out["cls_token"].shape[-1]
    out |= {
        "mask_token": torch.zeros(1, 1, 32),
        "decoder_embed.weight": torch.randn(32, d),
        "decoder_pos_embed": torch.randn(1, out["pos_embed"].shape[1], 32),
        "decoder_blocks.0.attn.qkv.weight": torch.randn(96, 32),
        "decoder_norm.weight": torch.ones(32),
        "decoder_pred.weight": torch.randn(3 * 8 * 8, 32),
    }
    return out


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------ parity
def test_vit_model_directory_matches_hf(tmp_path):
    hf = _vit()
    hf.save_pretrained(tmp_path / "vit")  # model.safetensors, 5.x names, with a pooler
    model = _stellar()
    init_encoder_from_mae(model, tmp_path / "vit")
    x = model.normalize(_images())
    with torch.no_grad():
        ours = model.encoder.forward_features(x)
        theirs = hf(pixel_values=x).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_vit_mae_model_directory_matches_hf(tmp_path):
    hf = _mae("ViTMAEModel")
    hf.save_pretrained(tmp_path / "mae")
    model = _stellar()
    init_encoder_from_mae(model, tmp_path / "mae")
    x = model.normalize(_images())
    n = (32 // 8) ** 2
    # Sorted noise + mask_ratio 0 keeps every patch in its original order.
    noise = torch.arange(n, dtype=torch.float32).expand(x.shape[0], n)
    with torch.no_grad():
        ours = model.encoder.forward_features(x)
        theirs = hf(pixel_values=x, noise=noise).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # The fixed HF table becomes the learnable parameter's starting value.
    torch.testing.assert_close(model.encoder.pos_embed, hf.embeddings.position_embeddings)


def test_every_layout_gives_the_same_tensors(tmp_path):
    hf = _mae("ViTMAEForPreTraining")
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    hf.save_pretrained(tmp_path / "pretrain")  # vit.* + decoder.*
    reference = read_mae_encoder(tmp_path / "pretrain")

    torch.save(state, tmp_path / "weights.bin")
    _assert_same(read_mae_encoder(tmp_path / "weights.bin"), reference)

    save_file(_to_v4(state), str(tmp_path / "v4.safetensors"))
    _assert_same(read_mae_encoder(tmp_path / "v4.safetensors"), reference)

    torch.save({"model": _to_original(state, "vit.")}, tmp_path / "mae_pretrain.pth")
    _assert_same(read_mae_encoder(tmp_path / "mae_pretrain.pth"), reference)

    # An independent check of the fused projection: rows q, then k, then v.
    qkv = reference["blocks.1.attn.qkv.weight"]
    torch.testing.assert_close(qkv[64:128], state["vit.layers.1.attention.k_proj.weight"])


def test_grid_resize_matches_hf_interpolation(tmp_path, caplog):
    hf = _vit(seed=3)
    hf.save_pretrained(tmp_path / "vit")
    model = _stellar(image_size=64)  # 8x8 position grid from a 4x4 one
    with caplog.at_level(logging.INFO, logger="stellar.checkpoint.mae"):
        init_encoder_from_mae(model, tmp_path / "vit")
    assert "4x4 resized to 8x8" in caplog.text
    pos = hf.embeddings.position_embeddings.detach()
    assert model.encoder.pos_embed.shape == (1, 1 + 64, 64)
    torch.testing.assert_close(model.encoder.pos_embed[:, :1], pos[:, :1], rtol=0, atol=0)
    grid = pos[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(
        model.encoder.pos_embed[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 64, 64)
    )
    x = model.normalize(_images(64))
    with torch.no_grad():
        ours = model.encoder.forward_features(x)
        theirs = hf(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"hidden_size": 96, "intermediate_size": 128},
            r"wrong shapes: cls_token \(file \(1, 1, 64\), model \(1, 1, 96\)\)",
        ),
        ({"num_hidden_layers": 3}, r"missing keys: blocks\.2\."),
        ({"patch_size": 4}, r"patch_embed\.weight \(file \(64, 3, 8, 8\), model \(64, 3, 4, 4\)\)"),
        ({"num_attention_heads": 8}, "MAE attention heads 4, but the model has 8"),
    ],
)
def test_architecture_mismatch_is_named(tmp_path, changes, message):
    _vit().save_pretrained(tmp_path / "vit")
    model = _stellar(**changes)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        init_encoder_from_mae(model, tmp_path / "vit")
    _assert_same(model.encoder.state_dict(), before)  # nothing half-loaded


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update({"blocks.0.attn.extra.weight": torch.zeros(1)}), "blocks.0.attn.extra"),
        (lambda s: s.pop("norm.bias"), r"missing keys: norm\.bias"),
        (lambda s: s.pop("blocks.1.mlp.fc2.weight"), r"missing keys: blocks\.1\.mlp\.fc2\.weight"),
        (
            lambda s: s.update({"fc_norm.weight": s.pop("norm.weight")}),
            "fine-tuned.*pretraining checkpoint",
        ),
    ],
)
def test_bad_original_checkpoints_are_refused(tmp_path, edit, message):
    state = _to_original(_vit().state_dict(), "")
    edit(state)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=message):
        init_encoder_from_mae(_stellar(), tmp_path / "bad.pth")


def test_unknown_hf_key_is_named(tmp_path):
    state = {k: v.clone() for k, v in _mae("ViTMAEForPreTraining").state_dict().items()}
    state["vit.embeddings.extra_scale"] = torch.ones(1)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="vit.embeddings.extra_scale"):
        read_mae_encoder(tmp_path / "model.safetensors")
    del state["vit.embeddings.extra_scale"]
    state["classifier.weight"] = torch.zeros(2, 64)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="fine-tuned classifier.*classifier.weight"):
        read_mae_encoder(tmp_path / "model.safetensors")


def test_not_a_vit_checkpoint(tmp_path):
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="neither an original MAE checkpoint"):
        read_mae_encoder(tmp_path / "x.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        read_mae_encoder(tmp_path / "empty")
