"""Official key layouts: the released manifests, transformers 4.x/5.x names, strict loading."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from stellar import STELLAR, create_stellar, load_stellar
from stellar.checkpoint.official import KNOWN_UNUSED_PREFIXES, from_official, to_official
from stellar.models.infer import infer_config
from stellar.models.registry import get_config

RELEASED = ["stellar-b16", "stellar-l16", "stellar-h16"]


def _manifest(reference_dir, name):
    data = json.loads((reference_dir / "official_checkpoint_keys.json").read_text())
    return data[name]


@pytest.mark.parametrize("name", RELEASED)
def test_our_layout_equals_released_manifest(reference_dir, name):
    manifest = _manifest(reference_dir, name)
    with torch.device("meta"):
        model = STELLAR(get_config(name), purpose="pretrain")
    ours = {k: list(v.shape) for k, v in to_official(model.state_dict()).items()}
    keys = manifest["keys"].items()
    released = {k: v for k, v in keys if not k.startswith(KNOWN_UNUSED_PREFIXES)}
    assert ours == released
    encoder = sum(v.numel() for k, v in model.state_dict().items() if k.startswith("encoder."))
    assert encoder == manifest["encoder_params"] - manifest["keys"]["encoder.pooler.dense.weight"][
        0
    ] * (manifest["keys"]["encoder.pooler.dense.weight"][1] + 1)


@pytest.mark.parametrize("name", RELEASED)
def test_infer_config_from_released_shapes(reference_dir, name):
    keys = _manifest(reference_dir, name)["keys"]
    ours, _ = from_official({k: torch.empty(v, device="meta") for k, v in keys.items()})
    assert infer_config({k: tuple(v.shape) for k, v in ours.items()}) == get_config(name)


def _v5_layout(state):
    """Rename official 4.x keys to the transformers-5.x ViT layout (what HF 5.x writes)."""
    parts = {
        "attention.attention.query": "attention.q_proj",
        "attention.attention.key": "attention.k_proj",
        "attention.attention.value": "attention.v_proj",
        "attention.output.dense": "attention.o_proj",
        "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
    }
    out = {}
    for key, value in state.items():
        for part in ("encoder", "decoder"):
            prefix = f"{part}.encoder.layer."
            if key.startswith(prefix):
                i, rest = key[len(prefix) :].split(".", 1)
                stem, kind = rest.rsplit(".", 1)
                key = f"{part}.layers.{i}.{parts.get(stem, stem)}.{kind}"
        out[key] = value
    return out


def test_transformers_v5_layout_loads_identically(tmp_path):
    model = create_stellar("stellar-tiny", purpose="pretrain")
    official = to_official(model.state_dict())
    save_file(_v5_layout(official), tmp_path / "v5.safetensors")
    loaded = load_stellar(tmp_path / "v5.safetensors", purpose="pretrain")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_round_trip_mapping_is_exact():
    model = create_stellar("stellar-tiny", purpose="pretrain")
    mapped, unknown = from_official(to_official(model.state_dict()))
    assert not unknown
    assert mapped.keys() == model.state_dict().keys()


def test_known_unused_keys_are_accepted(tmp_path, caplog):
    model = create_stellar("stellar-tiny", purpose="reconstruct")
    state = to_official(model.state_dict())
    state["encoder.pooler.dense.weight"] = torch.zeros(96, 96)
    state["decoder.embeddings.cls_token"] = torch.zeros(1, 1, 512)
    save_file(state, tmp_path / "m.safetensors")
    load_stellar(tmp_path / "m.safetensors", purpose="reconstruct")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda s: s.update({"encoder.mystery.weight": torch.zeros(3)}), "encoder.mystery.weight"),
        (
            lambda s: s.pop("encoder.encoder.layer.1.output.dense.bias"),
            "encoder.encoder.layer.1.output.dense.bias",
        ),
        (lambda s: s.pop("encoder.encoder.layer.0.attention.attention.key.weight"), "key.weight"),
        (lambda s: s.update({"dense_proj.weight": torch.zeros(5, 96)}), "dense_proj.weight"),
    ],
)
def test_strict_loading_names_the_bad_keys(tmp_path, edit, message):
    model = create_stellar("stellar-tiny", purpose="pretrain")
    state = to_official(model.state_dict())
    edit(state)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_stellar(tmp_path / "bad.safetensors", purpose="pretrain")


def test_reconstruct_needs_a_decoder(tmp_path):
    encoder_only = create_stellar("stellar-tiny", purpose="encode")
    encoder_only.save_pretrained(tmp_path)
    assert load_stellar(tmp_path).purpose == "encode"
    with pytest.raises(ValueError, match="no reconstruction decoder"):
        load_stellar(tmp_path, purpose="reconstruct")


def test_pretrain_from_encoder_only_checkpoint_starts_heads_fresh(tmp_path, caplog):
    source = create_stellar("stellar-tiny", purpose="encode")
    source.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        model = load_stellar(tmp_path, purpose="pretrain")
    assert "random init" in caplog.text
    torch.testing.assert_close(model.sparse_tokens, source.sparse_tokens)
    assert model.training and model.sparse_tokens.requires_grad


def test_vq_model_required_for_vq_reconstruction(tmp_path):
    model = create_stellar("stellar-tiny", purpose="reconstruct", decoder_head="vq")
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="vq_model"):
        load_stellar(tmp_path, purpose="reconstruct")


@pytest.mark.parametrize("name", RELEASED)
@pytest.mark.parametrize("purpose", ["encode", "reconstruct", "pretrain"])
def test_released_layout_loads_strictly_for_every_purpose(reference_dir, name, purpose):
    from stellar.checkpoint.official import load_official

    keys = _manifest(reference_dir, name)["keys"]
    state = {k: torch.empty(v, device="meta") for k, v in keys.items()}
    with torch.device("meta"):
        model = STELLAR(get_config(name), purpose=purpose)
    load_official(model, state, source=name)  # raises on any unexpected/missing key


def _tiny_official(purpose="pretrain"):
    return to_official(create_stellar("stellar-tiny", purpose=purpose).state_dict())


def test_extra_tensors_inside_a_built_part_are_refused(tmp_path):
    state = _tiny_official()
    # A second decoder block while the config says num_decoder_layers=1.
    state.update(
        {
            k.replace("layer.0.", "layer.1."): v.clone()
            for k, v in list(state.items())
            if k.startswith("decoder.encoder.layer.0.")
        }
    )
    state["clustering_head.bogus.weight"] = torch.zeros(3)
    save_file(state, tmp_path / "extra.safetensors")
    config = create_stellar("stellar-tiny").config.to_dict()
    (tmp_path / "config.json").write_text(json.dumps(config))  # no inferring depth
    (tmp_path / "model.safetensors").symlink_to(tmp_path / "extra.safetensors")
    with pytest.raises(ValueError, match="unexpected keys") as err:
        load_stellar(tmp_path, purpose="reconstruct")
    assert "decoder.encoder.layer.1.intermediate.dense.weight" in str(err.value)
    assert "clustering_head" not in str(err.value)  # not built for reconstruct: left out
    with pytest.raises(ValueError, match=r"clustering_head\.bogus\.weight"):
        load_stellar(tmp_path, purpose="pretrain")
    # Parts the purpose does not build may hold anything: encode ignores both.
    assert load_stellar(tmp_path, purpose="encode").decoder is None


@pytest.mark.parametrize(
    "drop",
    [
        "reconstruction_head.weight",
        "position_embedding.positional_encoding_gaussian_matrix",
        "decoder_proj.weight",
        "decoder.encoder.layer.0.intermediate.dense.weight",
        "clustering_head.predictor.layers.0.weight",
        "clustering_head.layer.weight",
    ],
)
def test_bare_file_missing_a_decoder_or_head_tensor(tmp_path, drop):
    source = create_stellar("stellar-tiny", purpose="pretrain")
    state = to_official(source.state_dict())
    del state[drop]
    save_file(state, tmp_path / "bare.safetensors")  # no config: inferred
    model = load_stellar(tmp_path / "bare.safetensors", purpose="encode")
    assert model.config.encoder == source.config.encoder
    torch.testing.assert_close(model.sparse_tokens, source.sparse_tokens, rtol=0, atol=0)
    # Building the damaged part names what is missing (never half random init).
    with pytest.raises(ValueError, match="missing keys|wrong shapes"):
        load_stellar(tmp_path / "bare.safetensors", purpose="pretrain")


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        ("encoder.embeddings.position_embeddings", "position embeddings"),
        ("encoder.encoder.layer.0.intermediate.dense.weight", "first MLP"),
    ],
)
def test_bare_file_missing_an_encoder_tensor_says_so(tmp_path, drop, named):
    state = _tiny_official("encode")
    del state[drop]
    save_file(state, tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match=f"cannot read a ViT architecture.*missing the {named}"):
        load_stellar(tmp_path / "bare.safetensors")
