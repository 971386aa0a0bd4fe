"""Paths and names: ``load_stellar``, ``save_pretrained``, ``list_models``, tokenizers."""

from __future__ import annotations

import pytest
import torch

from stellar import create_stellar, list_models, load_stellar
from stellar.checkpoint.weights import read_state_dict


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
    assert list_models("*b16*") == ["stellar-b16"]  # timm's pattern argument


def test_save_and_load_round_trip(tmp_path):
    model = create_stellar("stellar-tiny", purpose="reconstruct")
    model.save_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "config.json").is_file()
    loaded = load_stellar(tmp_path / "run", purpose="reconstruct")
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
    from safetensors.torch import save_file

    from stellar.checkpoint.official import to_official

    model = create_stellar("stellar-tiny", purpose="pretrain")
    save_file(to_official(model.state_dict()), tmp_path / "bare.safetensors")
    loaded = load_stellar(tmp_path / "bare.safetensors", purpose="pretrain")
    assert loaded.config == model.config


def test_a_training_run_folder_means_its_last_checkpoint(tmp_path):
    from stellar.hub import inspect_model, load_model

    model = create_stellar("stellar-tiny", purpose="reconstruct")
    model.save_pretrained(tmp_path / "run" / "checkpoints" / "last")
    for load in (load_stellar, load_model):
        loaded = load(tmp_path / "run")
        torch.testing.assert_close(loaded.sparse_tokens, model.sparse_tokens, rtol=0, atol=0)
    info = inspect_model(tmp_path / "run")
    assert info.config == model.config and info.has_decoder


def test_a_directory_with_several_weights_files_asks_for_one(tmp_path):
    create_stellar("stellar-tiny").save_pretrained(tmp_path / "a")
    for name in ("x.safetensors", "y.safetensors"):
        (tmp_path / "a" / "model.safetensors").rename(tmp_path / "a" / name)
        create_stellar("stellar-tiny").save_pretrained(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="2 other .safetensors: pass the weights"):
        load_stellar(tmp_path / "a")
    assert load_stellar(tmp_path / "a" / "x.safetensors").config.num_sparse_tokens == 6


def test_the_release_repository_asks_for_a_released_name():
    """microsoft/STELLAR holds stellar-*.safetensors, not the model.safetensors of an org/name."""
    with pytest.raises(FileNotFoundError, match="registered model name \\(known: stellar-b16"):
        load_stellar("microsoft/STELLAR")


@pytest.mark.parametrize("levels,ok", [(3, False), (4, True), (5, False)])
def test_vq_tokenizer_downsampling_must_match_the_patch_size(levels, ok):
    from stellar.models.vqgan import MaskGITVQGAN

    # stellar-tiny's patches are 8 px; `levels` levels downsample by 2 ** (levels - 1)
    tokenizer = MaskGITVQGAN(
        hidden_channels=32, channel_mult=(1,) * levels, num_res_blocks=1, z_channels=32,
        codebook_size=1024,
    )  # fmt: skip
    model = create_stellar("stellar-tiny", purpose="pretrain", decoder_head="vq")
    if ok:
        model.set_tokenizer(tokenizer)
        assert model.tokenizer is tokenizer
        return
    factor = 2 ** (levels - 1)
    with pytest.raises(
        ValueError, match=f"downsamples by {factor}, but this model's patches are 8"
    ):
        create_stellar("stellar-tiny", purpose="pretrain", decoder_head="vq", vq_model=tokenizer)
    with pytest.raises(ValueError, match=f"downsamples by {factor}"):
        model.set_tokenizer(tokenizer)  # the Python API checks too
    assert model.tokenizer is None


@pytest.mark.parametrize("name", ["stellar-b16", "stellar-l16", "stellar-h16"])
def test_the_released_f16_tokenizer_fits_every_released_model(name):
    from stellar.models.registry import get_config
    from stellar.models.vqgan import MaskGITVQGAN, check_tokenizer

    f16 = MaskGITVQGAN(
        hidden_channels=32, channel_mult=(1, 1, 1, 1, 1), num_res_blocks=1, z_channels=32,
        codebook_size=1024,
    )  # fmt: skip
    assert f16.downsample_factor == 16
    check_tokenizer(get_config(name), f16)  # patch 16, and patch 14 (resized to 256 px)


def test_vq_tokenizer_codebook_must_match_the_head(tmp_path):
    from safetensors.torch import save_file

    from stellar.models.vqgan import MaskGITVQGAN

    def tokenizer(codes: int) -> MaskGITVQGAN:
        return MaskGITVQGAN(
            hidden_channels=32, channel_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=32,
            codebook_size=codes,
        )  # fmt: skip

    with pytest.raises(ValueError, match="codebook of 64 codes.*predicts 1024"):
        create_stellar(
            "stellar-tiny", purpose="pretrain", decoder_head="vq", vq_model=tokenizer(64)
        )
    ok = create_stellar(
        "stellar-tiny", purpose="pretrain", decoder_head="vq", vq_model=tokenizer(1024)
    )
    assert ok.tokenizer.codebook_size == 1024

    create_stellar("stellar-tiny", purpose="reconstruct", decoder_head="vq").save_pretrained(
        tmp_path / "m"
    )
    save_file(tokenizer(64).state_dict(), str(tmp_path / "vq64.safetensors"))
    with pytest.raises(ValueError, match="vq64.safetensors has a codebook of 64 codes") as err:
        load_stellar(tmp_path / "m", purpose="reconstruct", vq_model=tmp_path / "vq64.safetensors")
    assert "1024" in str(err.value)


def test_unknown_names_and_presets_explain_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="registered model name"):
        load_stellar("stellar-nonexistent")
    with pytest.raises(FileNotFoundError, match="create_stellar"):
        load_stellar("stellar-tiny")
    with pytest.raises(ValueError, match="purpose"):
        load_stellar("stellar-tiny", purpose="finetune")
    config = create_stellar("stellar-tiny").config.replace(num_sparse_tokens=3)
    assert create_stellar(config, purpose="reconstruct").num_tokens == 3  # a config of one's own


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds(name):
    with torch.device("meta"):
        model = create_stellar(name, purpose="pretrain")
    assert model.config.num_sparse_tokens == model.sparse_tokens.shape[0]


def test_a_run_folder_with_a_broken_config_yaml_is_one_error_naming_it(tmp_path):
    from stellar.hub import recorded_tokenizer

    assert recorded_tokenizer(tmp_path) is None  # no run config: no recorded tokenizer
    (tmp_path / "config.yaml").write_text("vq_model: [tokenizer.bin\n")  # edited by hand
    with pytest.raises(ValueError, match=f"{tmp_path / 'config.yaml'}: invalid YAML at line 2"):
        recorded_tokenizer(tmp_path / "checkpoints" / "last")  # a checkpoint folder of the run
