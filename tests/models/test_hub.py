"""Names, paths and files: ``load_stellar``, ``save_pretrained``, ``list_models``."""

from __future__ import annotations

import pytest
import torch

from stellar import STELLAR, create_stellar, list_models, load_stellar
from stellar.checkpoint.io import read_state_dict


def test_list_models_has_released_and_presets():
    names = list_models()
    for name in [
        "stellar-b16",
        "stellar-l16",
        "stellar-h16",
        "stellar-b8",
        "stellar-b24",
        "stellar-tiny",
    ]:
        assert name in names
    assert "stellar-tiny" not in list_models(released_only=True)


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = create_stellar("stellar-tiny", purpose="reconstruct")
    model.save_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "config.json").is_file()
    loaded = STELLAR.from_pretrained(tmp_path / "run", purpose="reconstruct")
    assert loaded.config == model.config
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model.encode(images), loaded.encode(images)
        torch.testing.assert_close(a["lowrank"], b["lowrank"], rtol=0, atol=0)
        torch.testing.assert_close(model.reconstruct(a)["x_hat"], loaded.reconstruct(b)["x_hat"])


def test_saved_file_is_in_official_v4_layout_and_self_describing(tmp_path):
    create_stellar("stellar-tiny", purpose="encode").save_pretrained(tmp_path)
    state, metadata = read_state_dict(tmp_path / "model.safetensors")
    assert "encoder.encoder.layer.0.attention.attention.query.weight" in state
    assert not any(".qkv." in k or ".blocks." in k for k in state)
    (tmp_path / "config.json").unlink()
    assert "stellar_config" in metadata
    assert load_stellar(tmp_path / "model.safetensors").config.num_sparse_tokens == 6


def test_bare_file_without_config_is_inferred(tmp_path):
    from stellar.checkpoint.io import save_state_dict
    from stellar.checkpoint.official import to_official

    model = create_stellar("stellar-tiny", purpose="pretrain")
    save_state_dict(to_official(model.state_dict()), tmp_path / "bare.safetensors")
    loaded = load_stellar(tmp_path / "bare.safetensors", purpose="pretrain")
    assert loaded.config == model.config


def test_registered_name_resolves_from_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STELLAR_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="not on this machine"):
        load_stellar("stellar-b8")
    small = create_stellar("stellar-tiny")
    small.save_pretrained(tmp_path / "home" / "stellar-b8")
    assert load_stellar("stellar-b8").config.num_sparse_tokens == 6


def test_unknown_names_and_presets_explain_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="registered model name"):
        load_stellar("stellar-nonexistent")
    with pytest.raises(FileNotFoundError, match="create_stellar"):
        load_stellar("stellar-tiny")
    with pytest.raises(ValueError, match="purpose"):
        load_stellar("stellar-tiny", purpose="finetune")


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds(name):
    with torch.device("meta"):
        model = create_stellar(name, purpose="pretrain")
    assert model.config.num_sparse_tokens == model.sparse_tokens.shape[0]
