"""Released weights as users get them: the hub repository's layout, names through
``huggingface_hub`` (a local server and cache: see ``conftest.py``), torch.hub."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from stellar import create_stellar, load_stellar
from stellar.checkpoint.official import to_official
from stellar.models.registry import get_config, list_models
from stellar.models.stellar import STELLAR

REPO = Path(__file__).resolve().parents[2]
ATOL = 1e-5
TINY_VIT = {  # the reference fixture's encoder, as an HF ViT config.json says it
    "model_type": "vit",
    "hidden_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 384,
    "image_size": 64,
    "patch_size": 8,
    "num_channels": 3,
    "layer_norm_eps": 1e-12,
    "qkv_bias": True,
    "hidden_act": "gelu",
}


@pytest.fixture(autouse=True)
def _no_network(hf_hub):
    """Every test here talks to the local hub only."""


def _hub_layout(folder: Path, weights: Path, vit: dict | None = None, **entry) -> Path:
    """The hub repository's layout: a model table, the weights, a backbone directory."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(weights, folder / "stellar-tiny.safetensors")
    (folder / "backbone").mkdir(exist_ok=True)
    (folder / "backbone" / "config.json").write_text(json.dumps(vit or TINY_VIT))
    row = {
        "weights": "stellar-tiny.safetensors",
        "num_sparse_tokens": 6,
        "num_decoder_layers": 1,
        "spatial_temp": 0.06,
        "backbone": "backbone",
    } | entry
    table = {"models": {"stellar-tiny": row, "stellar-other": {"weights": "other.safetensors"}}}
    (folder / "config.json").write_text(json.dumps(table))
    return folder / "stellar-tiny.safetensors"


def _outputs(path: Path, tiny_io: dict) -> tuple[dict, dict]:
    model = load_stellar(path, purpose="reconstruct")
    with torch.no_grad():
        out = model.encode(tiny_io["input.image"])
        rec = model.reconstruct(out)
    return out, rec


def test_hub_layout_matches_the_golden_tensors(reference_dir, tiny_io, tmp_path):
    weights = _hub_layout(tmp_path / "repo", reference_dir / "stellar-tiny" / "weights.safetensors")
    out, rec = _outputs(weights, tiny_io)
    for key in ("cls", "dense", "sparse", "spatial", "lowrank"):
        torch.testing.assert_close(out[key].float(), tiny_io[f"encode.{key}"], atol=ATOL, rtol=0)
    for key in ("decoder_output", "x_hat"):
        torch.testing.assert_close(rec[key].float(), tiny_io[f"decode.{key}"], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("vit", "entry"),
    [(None, {"spatial_temp": 0.2}), (TINY_VIT | {"num_attention_heads": 2}, {})],
    ids=["spatial_temp", "heads"],
)
def test_the_table_and_backbone_are_read(reference_dir, tiny_io, tmp_path, vit, entry):
    """A wrong value in the table changes the outputs: it is used, not ignored."""
    source = reference_dir / "stellar-tiny" / "weights.safetensors"
    weights = _hub_layout(tmp_path / "repo", source, vit, **entry)
    model = load_stellar(weights)
    assert model.config.spatial_temp == entry.get("spatial_temp", 0.06)
    assert model.config.encoder.num_attention_heads == (vit or TINY_VIT)["num_attention_heads"]
    with torch.no_grad():
        out = model.encode(tiny_io["input.image"])
    assert (out["spatial"] - tiny_io["encode.spatial"]).abs().max() > 1e-3


def test_a_table_entry_of_the_users_own_name(reference_dir, tiny_io, tmp_path):
    """A fine-tune published in the official layout under its own name: the table's fields and
    backbone over the tensor shapes, loaded exactly."""
    weights = _hub_layout(tmp_path / "repo", reference_dir / "stellar-tiny" / "weights.safetensors")
    table_file = weights.parent / "config.json"
    models = json.loads(table_file.read_text())["models"]
    models["my-finetune"] = models.pop("stellar-tiny")
    table_file.write_text(json.dumps({"models": models}))
    assert "my-finetune" not in list_models()
    out, _ = _outputs(weights, tiny_io)
    torch.testing.assert_close(out["sparse"].float(), tiny_io["encode.sparse"], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("vit", "entry", "named"),
    [
        (None, {"num_sparse_tokens": 8}, r"sparse_tokens \(file \(6, 96\), model \(8, 96\)\)"),
        (None, {"num_decoder_layers": 2}, r"missing keys: decoder\.encoder\.layer\.1\."),
        (TINY_VIT | {"hidden_size": 128}, {}, r"file \(1, 1, 96\), model \(1, 1, 128\)"),
        (TINY_VIT | {"num_hidden_layers": 4}, {}, r"missing keys: encoder\.encoder\.layer\.3\."),
    ],
)
def test_a_table_that_contradicts_the_shapes_is_an_error(
    reference_dir, tmp_path, vit, entry, named
):
    source = reference_dir / "stellar-tiny" / "weights.safetensors"
    weights = _hub_layout(tmp_path / "repo", source, vit, **entry)
    with pytest.raises(ValueError, match=named):
        load_stellar(weights, purpose="reconstruct")


def test_a_file_the_table_does_not_list_is_refused(reference_dir, tmp_path):
    weights = _hub_layout(tmp_path / "repo", reference_dir / "stellar-tiny" / "weights.safetensors")
    shutil.copy(weights, weights.parent / "renamed.safetensors")
    with pytest.raises(ValueError, match="no entry has weights 'renamed.safetensors'"):
        load_stellar(weights.parent / "renamed.safetensors")


# ------------------------------------------------------------------ names, through huggingface_hub
@pytest.fixture
def tiny_released(monkeypatch):
    """A registered, "released" name with the tiny architecture (real ones are ViT-B+)."""
    from stellar.models import registry

    name = "stellar-test-released"
    monkeypatch.setitem(registry._REGISTRY, name, registry._REGISTRY["stellar-tiny"])
    monkeypatch.setitem(registry.RELEASED_SIZES, name, ("facebook/vit-mae-base", 6))
    return name


def _serve_release(hf_hub, reference_dir: Path, name: str, **entry) -> None:
    """A tiny release on the hub: the reference weights, the model table, an HF backbone."""
    row = {
        "weights": f"{name}.safetensors",
        "num_sparse_tokens": 6,
        "num_decoder_layers": 1,
        "spatial_temp": 0.06,
        "backbone": "test-org/tiny-vit",
    } | entry
    weights = reference_dir / "stellar-tiny" / "weights.safetensors"
    hf_hub.put("microsoft/STELLAR", f"{name}.safetensors", weights)
    hf_hub.put("microsoft/STELLAR", "config.json", json.dumps({"models": {name: row}}))
    hf_hub.put("test-org/tiny-vit", "config.json", json.dumps(TINY_VIT))


def test_a_released_name_downloads_then_loads_offline(
    hf_hub, reference_dir, tiny_io, tiny_released
):
    _serve_release(hf_hub, reference_dir, tiny_released)
    model = load_stellar(tiny_released, purpose="reconstruct")
    assert sorted(hf_hub.downloads) == [
        ("microsoft/STELLAR", "config.json"),
        ("microsoft/STELLAR", f"{tiny_released}.safetensors"),
        ("test-org/tiny-vit", "config.json"),
    ]
    with torch.no_grad():
        out = model.encode(tiny_io["input.image"])
    torch.testing.assert_close(out["lowrank"], tiny_io["encode.lowrank"], atol=ATOL, rtol=0)
    hf_hub.offline()
    assert load_stellar(tiny_released).config == model.config
    assert len(hf_hub.downloads) == 3  # the cache answered


def test_the_table_entry_decides_over_the_registry(hf_hub, reference_dir, tiny_released, caplog):
    _serve_release(hf_hub, reference_dir, tiny_released, spatial_temp=0.125)
    assert load_stellar(tiny_released).config.spatial_temp == 0.125
    assert get_config(tiny_released).spatial_temp != 0.125
    del hf_hub.server.files[("microsoft/STELLAR", "config.json")]
    shutil.rmtree(hf_hub.cache)  # without the table: the registered architecture
    with caplog.at_level(logging.WARNING):
        assert load_stellar(tiny_released).config == get_config(tiny_released)
    assert "registered architecture" in caplog.text


@pytest.mark.parametrize("offline", [True, False])
def test_a_name_not_available_is_a_clear_error(hf_hub, offline):
    if offline:
        hf_hub.offline()
    with pytest.raises(FileNotFoundError) as err:
        load_stellar("stellar-l16")
    text = str(err.value)
    assert isinstance(err.value, ValueError)  # a usage error: the command line prints one line
    assert "stellar-l16.safetensors of the Hugging Face repository microsoft/STELLAR" in text
    assert "`hf download microsoft/STELLAR stellar-l16.safetensors config.json`" in text
    assert ("HF_HUB_OFFLINE" in text) == offline
    assert hf_hub.downloads == []


@pytest.mark.parametrize("layout", ["own config", "bare file"])
def test_a_name_holding_another_architecture_is_refused(hf_hub, tmp_path, layout):
    from stellar.hub import inspect_model

    small = create_stellar("stellar-tiny", num_sparse_tokens=8)  # b8's token count, tiny widths
    small.save_pretrained(tmp_path / "small")
    weights = tmp_path / "small" / "model.safetensors"
    if layout == "bare file":  # no config anywhere: the registry's, which the shapes refute
        save_file(to_official(small.state_dict()), weights)
    hf_hub.put("microsoft/STELLAR", "stellar-b8.safetensors", weights)
    if layout == "own config":
        for load in (load_stellar, inspect_model):
            with pytest.raises(ValueError, match="registered name 'stellar-b8'") as err:
                load("stellar-b8")
            assert "encoder.hidden_size 96, stellar-b8 has 768" in str(err.value)
            assert "num_sparse_tokens" not in str(err.value)  # the field that agrees
    else:
        with pytest.raises(ValueError, match="does not fit.*wrong shapes"):
            load_stellar("stellar-b8")
    # The same file by its path loads as what it is.
    assert load_stellar(weights).config.encoder.hidden_size == 96


def test_the_tokenizer_by_name(hf_hub, tmp_path):
    from stellar.models.vqgan import MaskGITVQGAN, load_vqgan

    with pytest.raises(FileNotFoundError, match="`hf download fun-research/TiTok maskgit-vqgan"):
        load_vqgan("maskgit-vqgan")
    small = MaskGITVQGAN(hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=32)
    torch.save(small.state_dict(), tmp_path / "vq.bin")
    hf_hub.put("fun-research/TiTok", "maskgit-vqgan-imagenet-f16-256.bin", tmp_path / "vq.bin")
    tokenizer = load_vqgan("maskgit-vqgan")
    assert torch.equal(tokenizer.quantize.embedding.weight, small.quantize.embedding.weight)
    hf_hub.offline()
    load_vqgan("maskgit-vqgan")
    assert hf_hub.downloads == [("fun-research/TiTok", "maskgit-vqgan-imagenet-f16-256.bin")]


def test_mae_initialisation_by_model_id(hf_hub, tmp_path):
    transformers = pytest.importorskip("transformers")
    from stellar.checkpoint.mae import init_encoder_from_mae

    vit = transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=32, patch_size=8,
    )  # fmt: skip
    hf = transformers.ViTMAEModel(vit)
    hf.save_pretrained(tmp_path / "mae")
    for file in (tmp_path / "mae").iterdir():
        hf_hub.put("facebook/vit-mae-base", file.name, file)
    # a repository from before safetensors holds only the pickle
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    hf_hub.put("test-org/old-mae", "pytorch_model.bin", tmp_path / "pytorch_model.bin")
    hf_hub.put("test-org/old-mae", "config.json", tmp_path / "mae" / "config.json")
    model = create_stellar(
        "stellar-tiny",
        encoder={"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64,
                 "image_size": 32},
    )  # fmt: skip
    for repo in ("facebook/vit-mae-base", "test-org/old-mae"):
        init_encoder_from_mae(model, repo)
        torch.testing.assert_close(model.encoder.cls_token, hf.embeddings.cls_token)
    with pytest.raises(FileNotFoundError, match="hf download facebook/vit-mae-large config.json"):
        init_encoder_from_mae(model, "facebook/vit-mae-large")


def test_huggingface_hub_reads_the_cache_and_offline_mode_from_the_environment(
    hf_hub, reference_dir, tiny_released
):
    """In a fresh process, HF_HOME and HF_HUB_OFFLINE=1 alone decide (nothing patched)."""
    _serve_release(hf_hub, reference_dir, tiny_released)
    load_stellar(tiny_released)  # fills the cache under HF_HOME
    script = (
        "from stellar.checkpoint.weights import hub_file\n"
        "print(hub_file('microsoft/STELLAR', 'config.json'))\n"
        "hub_file('microsoft/STELLAR', 'stellar-l16.safetensors')\n"
    )
    path = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path)
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    snapshot = hf_hub.cache / "models--microsoft--STELLAR" / "snapshots"
    assert Path(run.stdout.strip()).parent.parent == snapshot, run.stderr
    assert "HF_HUB_OFFLINE is set" in run.stderr
    assert "hf download microsoft/STELLAR stellar-l16.safetensors" in run.stderr


# ------------------------------------------------------------------ inference, own layout
def test_a_bare_file_logs_the_defaulted_values(tmp_path, caplog):
    save_file(to_official(create_stellar("stellar-tiny").state_dict()), tmp_path / "b.safetensors")
    with caplog.at_level(logging.WARNING):
        model = load_stellar(tmp_path / "b.safetensors")
    assert model.config.encoder.num_attention_heads == 4
    assert "defaulted" in caplog.text and "spatial_temp=0.06" in caplog.text
    assert "encoder.num_attention_heads=4" in caplog.text


def test_a_bare_file_with_an_ambiguous_head_count_is_refused(tmp_path):
    enc = {"hidden_size": 128, "num_attention_heads": 8, "intermediate_size": 256}
    state = to_official(create_stellar("stellar-tiny", encoder=enc).state_dict())
    save_file(state, tmp_path / "w128.safetensors")
    with pytest.raises(ValueError, match="number of attention heads of a width-128"):
        load_stellar(tmp_path / "w128.safetensors")


def test_save_pretrained_writes_a_model_card(tmp_path):
    model = create_stellar("stellar-tiny", purpose="reconstruct")
    model.save_pretrained(tmp_path / "run")
    card = (tmp_path / "run" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: stellar")
    assert "width 96, 3 blocks, 4 heads" in card and "| concept tokens (r) | 6 |" in card
    assert "1 block, width" in card  # the tiny decoder's one block
    assert load_stellar(tmp_path / "run").config == model.config  # the card is no obstacle
    (tmp_path / "run" / "README.md").write_text("my notes")
    other = create_stellar("stellar-tiny", purpose="reconstruct")
    other.save_pretrained(tmp_path / "run")  # new weights, the user's card kept
    assert (tmp_path / "run" / "README.md").read_text() == "my notes"
    saved = load_stellar(tmp_path / "run", purpose="reconstruct").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in other.state_dict().items())


def test_an_uploaded_save_pretrained_folder_loads_by_repository_id(hf_hub, tmp_path, monkeypatch):
    model = create_stellar("stellar-tiny", purpose="reconstruct")
    model.save_pretrained(tmp_path / "mine")
    for file in (tmp_path / "mine").iterdir():  # what `hf upload test-org/mine DIR` publishes
        hf_hub.put("test-org/mine", file.name, file)
    card = (tmp_path / "mine" / "README.md").read_text()
    code = card.split("```python\n")[1].split("```")[0].replace("ORG/NAME", "test-org/mine")
    images = torch.rand(2, 3, 64, 64)
    scope = {"images": images}
    exec(code, scope)  # the card's own lines
    with torch.no_grad():
        torch.testing.assert_close(scope["out"]["lowrank"], model.encode(images)["lowrank"])
    assert hf_hub.downloads == [("test-org/mine", "model.safetensors")]  # config in its metadata
    hf_hub.offline()
    assert load_stellar("test-org/mine", purpose="reconstruct").config == model.config
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="'nowhere/typo' is not a local file or folder"):
        load_stellar("nowhere/typo")
    (tmp_path / "runs").mkdir()  # a typo under an existing folder is a path, never a download
    with pytest.raises(FileNotFoundError, match="'runs/typo' is neither an existing file"):
        load_stellar("runs/typo")
    assert not [r for r in hf_hub.server.requests if r[1] == "runs/typo"]


def test_save_pretrained_says_when_it_writes_the_encoder_side_only(tmp_path, caplog):
    create_stellar("stellar-tiny").save_pretrained(tmp_path / "enc")
    assert "without a decoder" in caplog.text
    card = (tmp_path / "enc" / "README.md").read_text()
    assert "| decoder | none in this file" in card and '"reconstruct"' not in card
    with pytest.raises(ValueError, match="no reconstruction decoder"):
        load_stellar(tmp_path / "enc", purpose="reconstruct")


def test_a_state_dict_file_is_refused_with_the_way_to_load_it(tmp_path):
    torch.save(create_stellar("stellar-tiny").state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="load_state_dict") as err:
        load_stellar(tmp_path / "sd.pt")
    assert "missing" not in str(err.value)  # not the misleading 'missing keys' of before


def test_files_that_hold_no_weights_are_one_plain_line(tmp_path):
    (tmp_path / "notes.safetensors").write_text("hello\n")
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "notes.safetensors", tmp_path / "empty"):
        with pytest.raises((ValueError, FileNotFoundError)) as err:
            load_stellar(path)
        text = str(err.value)
        assert str(path) in text and "\n" not in text
        assert not text.rstrip(")").endswith(("101", "list"))  # no fragments of torch's reader


# ------------------------------------------------------------------ torch.hub
def test_torch_hub_entry_points_for_every_name():
    for name in ("stellar_b16", "stellar_tiny"):
        model = torch.hub.load(str(REPO), name, pretrained=False, source="local")
        assert isinstance(model, STELLAR)
        assert model.config == get_config(name.replace("_", "-"))
    hubconf = torch.hub.load(str(REPO), "stellar_tiny", pretrained=False, source="local")
    assert hubconf.purpose == "encode"
    on_cpu = torch.hub.load(
        str(REPO), "stellar_tiny", pretrained=False, source="local", device="cpu"
    )
    assert on_cpu.device.type == "cpu"  # device= passes through, as the docstring says
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf_module)
    for name in list_models():
        assert callable(getattr(hubconf_module, name.replace("-", "_")))


def test_torch_hub_pretrained_preset_says_it_has_no_release():
    with pytest.raises(FileNotFoundError, match="create_stellar"):
        torch.hub.load(str(REPO), "stellar_tiny", pretrained=True, source="local")
