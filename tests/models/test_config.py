"""``config.json``: the official schema loads; malformed or foreign configs are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stellar import create_stellar, load_stellar
from stellar.errors import UsageError
from stellar.models.config import StellarConfig


def _official(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "stellar-tiny" / "config.json").read_text())


def test_official_config_loads_with_its_types(reference_dir):
    config = StellarConfig.from_dict(_official(reference_dir))
    assert config.encoder.hidden_size == 96 and config.architecture == "stellar"
    assert isinstance(config.spatial_temp, float) and isinstance(config.encoder.qkv_bias, bool)
    # JSON writes 1.0 as 1 in some tools: an integer is a valid float field, stored as float.
    data = {**_official(reference_dir), "sk_scale": 1, "spatial_temp": None}
    config = StellarConfig.from_dict(data)
    assert config.sk_scale == 1.0 and type(config.sk_scale) is float
    assert config.spatial_temp is None


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: [], "expected a mapping"),
        (lambda d: "stellar", "expected a mapping"),
        (lambda d: {**d, "encoder": {**d["encoder"], "hidden_size": "96"}}, "encoder.hidden_size"),
        (lambda d: {**d, "spatial_temp": "0.06"}, "spatial_temp: expected a number or null"),
        (lambda d: {**d, "num_sparse_tokens": 6.0}, "num_sparse_tokens: expected an integer"),
        (lambda d: {**d, "num_sparse_tokens": True}, "num_sparse_tokens: expected an integer"),
        (lambda d: {**d, "encoder": {**d["encoder"], "qkv_bias": 1}}, "encoder.qkv_bias"),
        (lambda d: {**d, "decoder": [512]}, "config section decoder: expected a mapping"),
        (lambda d: {**d, "decoder_head": "conv"}, "decoder_head: expected one of"),
        (lambda d: {**d, "architecture": "resnet"}, "architecture: expected one of 'stellar'"),
        # An HF ViTMAE config.json: would otherwise become stellar-b16 with defaults.
        (
            lambda d: {"model_type": "vit_mae", "architectures": ["ViTMAEForPreTraining"]},
            "found none of its fields.*model_type",
        ),
        (lambda d: {"hidden_size": 768, "depth": 12}, "found none of its fields"),
        # Values that make no sense fail on load, not deep inside a forward pass.
        (lambda d: {**d, "spatial_temp": 0}, r"spatial_temp: expected a number > 0 or null"),
        (lambda d: {**d, "encoder": {**d["encoder"], "patch_size": 0}}, "patch_size: expected"),
        (lambda d: {**d, "sk_temp": -0.1}, "sk_temp: expected a number > 0"),
        # In the official schema but never implemented beyond the released 1.0: refused.
        (lambda d: {**d, "sk_scale": 2.0}, r"sk_scale: expected a number in \[1, 1\]"),
        (lambda d: {**d, "decoder": {"hidden_size": 5, "num_attention_heads": 1}}, "5 is odd"),
    ],
)
def test_malformed_config_names_the_field(reference_dir, edit, message):
    with pytest.raises(ValueError, match=message):
        StellarConfig.from_dict(edit(_official(reference_dir)))


def test_loading_a_checkpoint_with_a_malformed_config(tmp_path):
    create_stellar("stellar-tiny").save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["spatial_temp"] = "0.06"  # used to load, then crash at encode
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config\.json: spatial_temp"):
        load_stellar(tmp_path)


def test_overrides_are_type_checked():
    with pytest.raises(ValueError, match="num_sparse_tokens: expected an integer"):
        create_stellar("stellar-tiny", num_sparse_tokens="8")


def test_unknown_or_senseless_overrides_fail_before_any_model_is_built():
    with pytest.raises(UsageError, match=r"unknown config key\(s\) num_sparse_token; valid keys"):
        create_stellar("stellar-tiny", num_sparse_token=8)
    with pytest.raises(UsageError, match=r"encoder.patch_sz; valid keys under encoder"):
        create_stellar("stellar-tiny", encoder={"patch_sz": 4})
    with pytest.raises(UsageError, match="spatial_temp: expected a number > 0 or null, got -1"):
        create_stellar("stellar-tiny", spatial_temp=-1)
    # A nested override merges into the preset's section.
    model = create_stellar("stellar-tiny", encoder={"hidden_size": 64})
    assert model.config.encoder.hidden_size == 64 and model.config.encoder.patch_size == 8
