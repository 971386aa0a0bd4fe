"""What the loader refuses instead of loading something silently wrong."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from stellar import create_stellar, load_stellar
from stellar.checkpoint.official import to_official


def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path):
    state = to_official(create_stellar("stellar-tiny").state_dict())
    state["dense_proj.weight"] = state["dense_proj.weight"].clone()
    state["dense_proj.weight"][0, 0] = float("nan")
    state["sparse_tokens"] = torch.full_like(state["sparse_tokens"], float("inf"))
    save_file(state, tmp_path / "diverged.safetensors")
    with pytest.raises(ValueError, match="NaN or infinite.*dense_proj.weight, sparse_tokens"):
        load_stellar(tmp_path / "diverged.safetensors")


def test_the_config_json_beside_the_weights_is_the_one_source(tmp_path):
    create_stellar("stellar-tiny").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["spatial_temp"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_stellar(tmp_path).config.spatial_temp == 0.5
    # without it, the weights file describes itself (the config in its metadata)
    (tmp_path / "config.json").unlink()
    assert load_stellar(tmp_path / "model.safetensors").config.spatial_temp == 0.06


def test_reconstruct_without_a_decoder_says_so_even_for_a_vq_head(tmp_path):
    create_stellar("stellar-tiny", decoder_head="vq").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="carries no reconstruction decoder") as err:
        load_stellar(tmp_path, purpose="reconstruct")
    assert "vq_model" not in str(err.value)


def test_unknown_keyword_arguments_to_create_stellar_are_errors():
    with pytest.raises(ValueError, match="spatial_tmp"):
        create_stellar("stellar-tiny", spatial_tmp=0.1)
    assert create_stellar("stellar-tiny", spatial_temp=0.1).config.spatial_temp == 0.1
