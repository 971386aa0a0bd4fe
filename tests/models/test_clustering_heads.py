"""Online clustering heads: checkpoint layout, fixture parity, initialisation, fp32 logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stellar.losses.objective import clustering_targets, cross_entropy_soft
from stellar.models.networks import OnlineClustering

_HEADS = [
    ("clustering_head", "encode.sparse", "cluster"),
    ("cls_cluster_head", "encode.cls", "cls_cluster"),
]


def _tiny_head(reference_dir: Path, prefix: str) -> OnlineClustering:
    from safetensors.torch import load_file

    tiny = reference_dir / "stellar-tiny"
    cfg = json.loads((tiny / "config.json").read_text())
    head = OnlineClustering(
        cfg["encoder"]["hidden_size"],
        cfg["num_clusters"],
        hidden_dim=cfg["predictor_hidden_dim"],
        proto_dim=cfg["prototype_dim"],
    )
    weights = load_file(str(tiny / "weights.safetensors"))
    state = {k[len(prefix) + 1 :]: v for k, v in weights.items() if k.startswith(prefix + ".")}
    head.load_state_dict(state, strict=True)
    return head


def test_state_dict_layout() -> None:
    head = OnlineClustering(12, 40, hidden_dim=16, proto_dim=8)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "predictor.layers.0.weight": (16, 12),
        "predictor.layers.0.bias": (16,),
        "predictor.layers.2.weight": (8, 16),
        "predictor.layers.2.bias": (8,),
        "layer.weight": (40, 8),
    }


def test_prototypes_standard_normal_init() -> None:
    w = OnlineClustering(8, 2048, hidden_dim=8, proto_dim=64).layer.weight
    assert abs(w.mean().item()) < 0.02 and abs(w.std().item() - 1.0) < 0.02


def test_head_owns_its_initialisation_alone_or_inside_the_model() -> None:
    """Predictor trunc-normal(0.02) with zero biases whether built alone or by STELLAR."""
    from stellar import create_stellar

    alone = OnlineClustering(64, 512, hidden_dim=256, proto_dim=64)
    inside = create_stellar("stellar-tiny", purpose="pretrain").clustering_head
    for head in (alone, inside):
        for i in (0, 2):
            linear = head.predictor.layers[i]
            assert abs(linear.weight.std().item() - 0.02) < 0.002
            assert not linear.bias.any()
        assert abs(head.layer.weight.std().item() - 1.0) < 0.05


@pytest.mark.parametrize(("prefix", "inp", "out"), _HEADS)
def test_fixture_parity(
    reference_dir: Path, tiny_io: dict[str, torch.Tensor], prefix: str, inp: str, out: str
) -> None:
    head = _tiny_head(reference_dir, prefix)
    with torch.no_grad():
        logits = head(tiny_io[inp])
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, tiny_io[f"{out}.logits"], atol=1e-5, rtol=0)
    targets = clustering_targets(logits, sk_temp=0.06, n_iterations=3)
    assert targets.shape == logits.shape
    torch.testing.assert_close(targets, tiny_io[f"{out}.assignments"], atol=1e-5, rtol=0)
    loss = cross_entropy_soft(logits, targets, temp=0.12)
    torch.testing.assert_close(loss, tiny_io[f"{out}.loss"].reshape(()), atol=1e-5, rtol=0)


def test_prototype_layer_fp32_under_autocast_and_bf16_params() -> None:
    head = OnlineClustering(16, 32, hidden_dim=24, proto_dim=8)
    x = torch.randn(2, 3, 16)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x)
        hidden = head.predictor(x)
    assert hidden.dtype == torch.bfloat16 and logits.dtype == torch.float32
    expected = F.normalize(hidden.float(), dim=-1) @ head.layer.weight.t()
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)

    head = head.to(torch.bfloat16)
    logits = head(x)  # fp32 input, bf16 parameters
    assert logits.dtype == torch.float32
    hidden = head.predictor(x.bfloat16())
    expected = F.normalize(hidden.float(), dim=-1) @ head.layer.weight.float().t()
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    logits.sum().backward()
    assert head.layer.weight.grad is not None and head.layer.weight.grad.dtype == torch.bfloat16
