"""The conv stem of the shape benchmarks is a drop-in for the encoder's patch embedding."""

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
