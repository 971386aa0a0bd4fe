"""The model's behaviour: shapes, invariants, input checks, dtypes, SDPA vs plain maths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stellar import create_stellar
from stellar.layers.attention import Attention, attend


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_stellar("stellar-tiny", purpose="reconstruct")


def test_output_shapes_and_simplex_rows(model):
    out = model.encode(torch.rand(3, 3, 64, 48))
    n, r, d = 8 * 6, 6, 96
    assert out["sparse"].shape == (3, r, d)
    assert out["spatial"].shape == (3, n, r)
    assert out["dense"].shape == out["lowrank"].shape == (3, n, d)
    assert out["cls"].shape == (3, 1, d)
    assert out["peak_dist"].shape == (3, r)
    assert out["concat"].shape == (3, r, d + n)
    torch.testing.assert_close(out["spatial"].sum(-1), torch.ones(3, n))
    torch.testing.assert_close(out["lowrank"], out["spatial"] @ out["sparse"])
    rec = model.reconstruct(out, grid=(8, 6))
    assert rec["reconstruction"].shape == (3, 3, 64, 48)


def test_batch_elements_are_independent(model):
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        full = model.encode(images)["spatial"]
        single = model.encode(images[2:3])["spatial"]
    torch.testing.assert_close(full[2:3], single, atol=1e-6, rtol=1e-5)


def attention_reference(x: torch.Tensor, attn: Attention) -> torch.Tensor:
    """The plain softmax(QK^T/sqrt(d))V maths, to test the fused SDPA kernel against."""
    b, n, d = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
    weights = torch.softmax(q @ k.transpose(-2, -1) * (d // h) ** -0.5, dim=-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


def test_sdpa_matches_plain_attention():
    attn = Attention(32, 4)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(attn(x), attention_reference(x, attn), atol=1e-6, rtol=1e-5)


def test_bf16_cpu_attention_matches_fp32_sdpa_with_gradients(monkeypatch):
    q, k, v = (torch.randn(2, 3, 70, 24, requires_grad=True) for _ in range(3))
    exact = F.scaled_dot_product_attention(q, k, v)
    grads = torch.autograd.grad(exact.square().sum(), (q, k, v))
    low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    sdpa_calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(
        F, "scaled_dot_product_attention", lambda *a: sdpa_calls.append(1) or sdpa(*a)
    )
    fast = attend(*low)
    assert not sdpa_calls  # bf16 on CPU: the written-out product, not SDPA's flash kernel
    attend(q, k, v)
    assert sdpa_calls  # fp32 keeps SDPA
    import stellar.layers.attention as attention

    sdpa_calls.clear()
    monkeypatch.setattr(attention, "MAX_WRITTEN_OUT_SCORES", 2 * 3 * 70 * 70 - 1)
    attend(*low)
    assert sdpa_calls  # too many scores to hold: SDPA's kernel even in bf16
    assert fast.dtype == torch.bfloat16
    low_grads = torch.autograd.grad(fast.float().square().sum(), low)
    torch.testing.assert_close(fast.float(), exact, atol=2e-2, rtol=2e-2)
    for got, want in zip(low_grads, grads, strict=True):
        torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize(
    "images,message",
    [
        (torch.rand(3, 64, 64), "shape \\(B, 3, H, W\\)"),
        (torch.rand(1, 4, 64, 64), "3 RGB channels"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "floating-point"),
        (torch.rand(1, 3, 60, 64), "divisible by the patch size 8"),
        (torch.rand(0, 3, 64, 64), "non-empty"),
        (torch.rand(1, 3, 64, 64) * 255, "\\[0, 1\\]"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
    ],
)
def test_bad_input_is_refused(model, images, message):
    with pytest.raises(ValueError, match=message):
        model.encode(images)


def test_rounding_overshoot_is_accepted(model):
    images = torch.rand(1, 3, 64, 64)
    images[0, 0, 0, 0] = 1.0004
    model.encode(images)


def test_bfloat16_autocast_keeps_factorization_in_fp32(model):
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.encode(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.encode(images)
    assert out["spatial"].dtype == torch.float32
    torch.testing.assert_close(out["spatial"].sum(-1), torch.ones(2, 64))
    assert (out["spatial"] - ref["spatial"]).abs().max() < 0.1


def test_bfloat16_weights(model):
    half = create_stellar("stellar-tiny", purpose="reconstruct").to(dtype=torch.bfloat16)
    with torch.no_grad():
        out = half.encode(torch.rand(2, 3, 64, 64))
        rec = half.reconstruct(out)
    assert out["sparse"].dtype == torch.bfloat16
    assert out["spatial"].dtype == torch.float32
    assert torch.isfinite(rec["x_hat"].float()).all()


def test_backward_reaches_every_parameter():
    model = create_stellar("stellar-tiny", purpose="reconstruct").requires_grad_(True)
    out = model.encode(torch.rand(2, 3, 64, 64))
    loss = model.reconstruct(out)["x_hat"].square().mean() + out["cls"].square().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_masked_path_equals_full_path_when_keeping_everything(model):
    images = torch.rand(2, 3, 64, 64)
    keep = torch.arange(64).expand(2, -1)
    with torch.no_grad():
        full, masked = model.encode(images), model.encode_masked(images, keep)
    torch.testing.assert_close(masked["sparse"], full["sparse"], atol=1e-5, rtol=1e-5)


def test_each_part_is_initialised_by_its_own_rule():
    torch.manual_seed(0)
    model = create_stellar("stellar-tiny", purpose="pretrain")
    d = model.config.encoder.hidden_size
    for name, p in model.named_parameters():
        if name == "decoder.head.weight" or name.endswith("decoder.head.bias"):
            continue  # the ConvTranspose2d pixel head keeps PyTorch's default, set at build
        if name.endswith("bias") or (p.ndim == 1 and "norm" not in name):
            assert not p.any(), name
        elif "norm" in name:
            assert (p == 1).all(), name
        elif name.endswith(("clustering_head.layer.weight", "cls_cluster_head.layer.weight")):
            assert abs(p.std().item() - 1.0) < 0.1, name
        elif name == "sparse_tokens":
            assert abs(p.std().item() - d**-0.5) < 0.03, name
        else:
            assert abs(p.std().item() - 0.02) < 0.005, name


def test_decode_is_reconstructs_forward(model):
    out = model.encode(torch.rand(2, 3, 64, 48))
    decoded = model.decode(out["lowrank"], (8, 6))
    rec = model.reconstruct(out, grid=(8, 6))
    assert set(decoded) == {"decoder_output", "x_hat"}
    torch.testing.assert_close(rec["x_hat"], decoded["x_hat"])
    torch.testing.assert_close(rec["reconstruction"], decoded["x_hat"].clamp(0, 1))
    with pytest.raises(ValueError, match="grid"):
        model.decode(out["lowrank"], (8, 8))
    encoder_only = create_stellar("stellar-tiny", purpose="encode")
    with pytest.raises(ValueError, match="no decoder"):
        encoder_only.decode(out["lowrank"], (8, 6))


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    model = create_stellar("stellar-tiny", purpose="reconstruct").requires_grad_(True)
    images = torch.rand(2, 3, 64, 64)

    def loss_and_grads():
        model.zero_grad()
        out = model.encode(images)
        loss = model.reconstruct(out)["x_hat"].square().mean() + out["cls"].square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, plain_grads = loss_and_grads()
    model.encoder.checkpoint_blocks = True
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        checkpointed, grads = loss_and_grads()
    torch.testing.assert_close(checkpointed, plain)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    model.encoder.checkpoint_blocks = False
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(1) or t, lambda t: t):
        loss_and_grads()
    assert len(saved) < len(kept)  # the blocks' activations were not kept


def test_reconstruct_uses_the_encoded_grid_even_when_its_count_is_square(model):
    # 32 x 128 px at patch 8 is a 4 x 16 grid: 64 patches, which is also 8 x 8
    torch.manual_seed(0)
    images = torch.rand(1, 3, 32, 128)
    p = model.patch_size
    out = model.encode(images)
    assert out["grid"].tolist() == [[32 // p, 128 // p]]
    rec = model.reconstruct(out)["reconstruction"]
    assert rec.shape == (1, 3, 32, 128)
    explicit = model.reconstruct(out["sparse"], out["spatial"], grid=(32 // p, 128 // p))
    torch.testing.assert_close(rec, explicit["reconstruction"])


def test_reconstruct_refuses_bare_features_whose_grid_it_cannot_know(model):
    out = model.encode(torch.rand(1, 3, 16, 48))  # 2 x 6 patches: not a square count
    with pytest.raises(ValueError, match="grid=\\(h, w\\)"):
        model.reconstruct(out["sparse"], out["spatial"])


def test_edits_to_concepts_or_maps_take_effect_in_reconstruct(model):
    torch.manual_seed(0)
    out = model.encode(torch.rand(2, 3, 64, 64))
    before = model.reconstruct(out)["reconstruction"]
    torch.testing.assert_close(before, model.decode(out["lowrank"], (8, 8))["x_hat"].clamp(0, 1))
    edited = {**out, "sparse": out["sparse"].flip(1)}  # swap which concept is which
    after = model.reconstruct(edited)["reconstruction"]
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(
        after, model.reconstruct(edited["sparse"], out["spatial"])["reconstruction"]
    )


def test_the_encoded_grid_survives_slicing_and_joining_per_key(model):
    torch.manual_seed(0)
    out = model.encode(torch.rand(3, 3, 32, 128))
    assert out["grid"].shape == (3, 2)
    one = {k: v[1:2] for k, v in out.items()}
    assert model.reconstruct(one)["reconstruction"].shape == (1, 3, 32, 128)
    joined = {k: torch.cat([out[k], one[k]]) for k in out}
    assert model.reconstruct(joined)["reconstruction"].shape == (4, 3, 32, 128)
    other = model.encode(torch.rand(1, 3, 64, 64))
    mixed = {k: torch.cat([one[k].flatten(1), other[k].flatten(1)]) for k in ("grid",)}
    with pytest.raises(ValueError, match="different patch grids"):
        model.reconstruct({**one, "grid": mixed["grid"]})


def test_half_precision_features_reconstruct(model):
    """Features stored in fp16 / bf16 (``extract --fp16``) rebuild the image in the model's
    dtype, close to the fp32 features' reconstruction."""
    torch.manual_seed(0)
    out = model.encode(torch.rand(2, 3, 64, 64))
    full = model.reconstruct(out)["reconstruction"]
    for dtype in (torch.float16, torch.bfloat16):
        half = model.reconstruct({**out, "sparse": out["sparse"].to(dtype)})["reconstruction"]
        assert half.dtype == full.dtype
        torch.testing.assert_close(half, full, atol=0.05, rtol=0)
