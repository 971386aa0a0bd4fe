"""The shape reference benchmark's models and schedule are what its docs say they are."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from stellar import create_stellar


def _load_reference_script():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "shape_supervised_reference.py"
    spec = importlib.util.spec_from_file_location("shape_supervised_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_conv_stem_matches_the_patch_grid_and_width():
    script = _load_reference_script()
    model = create_stellar("stellar-tiny")
    cfg = model.config.encoder
    images = torch.rand(2, 3, 64, 64)
    linear = model.encoder.patch_embed(images)
    stem = script.conv_patch_stem(cfg.patch_size, cfg.hidden_size)(images)
    assert stem.shape == linear.shape == (2, cfg.hidden_size, 8, 8)


def test_conv_stem_rejects_a_patch_it_cannot_reach_by_halving():
    script = _load_reference_script()
    with pytest.raises(ValueError, match="power-of-two"):
        script.conv_patch_stem(6, 96)


def test_torch_vit_control_has_the_demo_encoders_size():
    script = _load_reference_script()
    cfg = create_stellar("stellar-tiny").config.encoder
    net = script.TorchViTClassifier(cfg.patch_size)
    assert len(net.blocks.layers) == cfg.num_hidden_layers
    block = net.blocks.layers[0]
    assert block.self_attn.embed_dim == cfg.hidden_size
    assert block.self_attn.num_heads == cfg.num_attention_heads
    assert block.linear1.out_features == cfg.intermediate_size
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, len(script.SHAPES))


def test_warmup_cosine_rises_for_a_tenth_of_the_steps_then_decays_to_zero():
    script = _load_reference_script()
    net = torch.nn.Linear(2, 2)
    optimizer, schedule = script.make_optimizer(net, lr=1.0, steps=100, warmup_cosine=True)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.1)
    assert max(lrs) == lrs[9] > 0.95
    assert all(a >= b for a, b in zip(lrs[9:-1], lrs[10:], strict=True))
    assert lrs[-1] < 0.01
    constant, schedule = script.make_optimizer(net, lr=1e-3, steps=100, warmup_cosine=False)
    constant.step()
    schedule.step()
    assert constant.param_groups[0]["lr"] == 1e-3
