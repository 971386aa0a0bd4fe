"""Released weights as users fetch them: the hub repository's layout, the HF cache, torch.hub.

Nothing here touches the network: the caches are fake folders in tmp_path, downloads are
either forbidden (HF_HUB_OFFLINE=1) or a stand-in for ``hf_hub_download``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

from stellar import create_stellar, load_stellar
from stellar.checkpoint import cache
from stellar.checkpoint.io import save_state_dict
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
def _isolated(tmp_path, monkeypatch):
    """No real cache or home folder is read, and nothing is downloaded."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("STELLAR_HOME", str(tmp_path / "stellar-home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("STELLAR_OFFLINE", raising=False)


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


@pytest.mark.parametrize(
    ("vit", "entry", "named"),
    [
        (None, {"num_sparse_tokens": 8}, "num_sparse_tokens 8 but the weights have 6"),
        (None, {"num_decoder_layers": 2}, "num_decoder_layers 2 but the weights have 1"),
        (TINY_VIT | {"hidden_size": 128}, {}, "hidden_size 128 but the weights have 96"),
        (TINY_VIT | {"num_hidden_layers": 4}, {}, "num_hidden_layers 4 but the weights have 3"),
    ],
)
def test_a_table_that_contradicts_the_shapes_is_an_error(
    reference_dir, tmp_path, vit, entry, named
):
    source = reference_dir / "stellar-tiny" / "weights.safetensors"
    weights = _hub_layout(tmp_path / "repo", source, vit, **entry)
    with pytest.raises(ValueError, match=named):
        load_stellar(weights)


def test_a_file_the_table_does_not_list_is_refused(reference_dir, tmp_path):
    weights = _hub_layout(tmp_path / "repo", reference_dir / "stellar-tiny" / "weights.safetensors")
    shutil.copy(weights, weights.parent / "renamed.safetensors")
    with pytest.raises(ValueError, match="no entry has weights 'renamed.safetensors'"):
        load_stellar(weights.parent / "renamed.safetensors")


def test_known_backbone_ids_need_no_network():
    from stellar.models.layout import backbone_encoder

    base = backbone_encoder("facebook/vit-mae-base", Path("."), allow_download=False)
    huge = backbone_encoder("facebook/vit-mae-huge", Path("."), allow_download=False)
    assert (base.hidden_size, base.num_attention_heads, base.patch_size) == (768, 12, 16)
    assert (huge.hidden_size, huge.num_hidden_layers, huge.patch_size) == (1280, 32, 14)


# ------------------------------------------------------------------ the Hugging Face cache
def _official_b16(path: Path) -> None:
    """Encoder-side stellar-b16 tensors (zeros, bf16 to keep the file small)."""
    with torch.device("meta"):
        model = STELLAR(get_config("stellar-b16"), purpose="encode")
    shapes = {k: v.shape for k, v in to_official(model.state_dict()).items()}
    save_state_dict({k: torch.zeros(s, dtype=torch.bfloat16) for k, s in shapes.items()}, path)


def _fake_hf_cache(
    root: Path, repo: str, files: dict[str, Path | str], revision="abc123", main=True
) -> Path:
    folder = root / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir(exist_ok=True)
    for name, content in files.items():
        blob = folder / "blobs" / f"{revision}-{name}"
        if isinstance(content, Path):
            shutil.move(content, blob)
        else:
            blob.write_text(content)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    if main:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(revision)
    return snapshot


@pytest.mark.parametrize("with_hub_library", [True, False])
def test_a_name_loads_from_the_hf_cache_with_the_tables_values(
    tmp_path, monkeypatch, with_hub_library
):
    if not with_hub_library:  # read the cache layout directly
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    table = {
        "models": {
            "stellar-b16": {
                "weights": "stellar-b16.safetensors",
                "num_sparse_tokens": 16,
                "num_decoder_layers": 6,
                "spatial_temp": 0.125,
                "backbone": "facebook/vit-mae-base",
            }
        }
    }
    _official_b16(tmp_path / "w.safetensors")
    files = {
        "stellar-b16.safetensors": tmp_path / "w.safetensors",
        "config.json": json.dumps(table),
    }
    _fake_hf_cache(tmp_path / "hf-home", "microsoft/STELLAR", files)
    model = load_stellar("stellar-b16")
    assert model.config.spatial_temp == 0.125 != get_config("stellar-b16").spatial_temp
    assert model.config.encoder == get_config("stellar-b16").encoder


def test_the_cache_prefers_refs_main_then_takes_any_snapshot(tmp_path, monkeypatch):
    root = tmp_path / "hf-home"
    _fake_hf_cache(root, "fun-research/TiTok", {"a.txt": "main"}, revision="r-main")
    newer = _fake_hf_cache(
        root, "fun-research/TiTok", {"a.txt": "new", "b.txt": "b"}, "r-new", main=False
    )
    for hub in (True, False):
        if not hub:
            monkeypatch.setitem(sys.modules, "huggingface_hub", None)
        assert cache.hf_cached("fun-research/TiTok", "a.txt").read_text() == "main"
        assert cache.hf_cached("fun-research/TiTok", "b.txt") == newer / "b.txt"
        assert cache.hf_cached("fun-research/TiTok", "c.txt") is None


def test_hf_hub_cache_variable_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert cache.hf_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("HF_HUB_CACHE")
    assert cache.hf_cache_dir() == tmp_path / "hf-home" / "hub"
    monkeypatch.delenv("HF_HOME")
    assert cache.hf_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"


@pytest.mark.parametrize(
    ("env", "download", "reason"),
    [
        ({"HF_HUB_OFFLINE": "1"}, True, "HF_HUB_OFFLINE=1"),
        ({"HF_HUB_OFFLINE": "0", "STELLAR_OFFLINE": "1"}, True, "STELLAR_OFFLINE=1"),
        ({"HF_HUB_OFFLINE": "0"}, False, "download=False"),
    ],
)
def test_a_missing_name_lists_every_place_and_the_command(
    tmp_path, monkeypatch, env, download, reason
):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    calls = []
    monkeypatch.setattr(cache, "_hub", lambda: pytest.fail("must not reach huggingface_hub"))
    monkeypatch.setattr(cache, "hf_cached", lambda repo, name: calls.append(name))
    with pytest.raises(FileNotFoundError) as err:
        load_stellar("stellar-l16", cache_dir=tmp_path / "mine", download=download)
    text = str(err.value)
    assert isinstance(err.value, ValueError)  # a usage error: the CLI prints one line
    for place in ("mine", "stellar-home", str(Path("home", ".cache", "stellar"))):
        assert str(tmp_path / place) in text
    assert "models--microsoft--STELLAR" in text and reason in text
    assert "`hf download microsoft/STELLAR stellar-l16.safetensors config.json`" in text
    assert calls == ["stellar-l16.safetensors"]


def test_a_missing_file_is_downloaded_when_allowed(tmp_path, monkeypatch):
    """The tokenizer by name: the hub cache, else ``hf_hub_download`` (a stand-in here)."""
    from stellar.models.vqgan import MaskGITVQGAN, load_vqgan

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    small = MaskGITVQGAN(
        hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=32, codebook_dim=32
    )
    fetched = []

    class FakeHub:
        @staticmethod
        def try_to_load_from_cache(*args, **kwargs):
            return None

        @staticmethod
        def hf_hub_download(repo_id, filename, cache_dir):
            fetched.append((repo_id, filename))
            path = Path(cache_dir) / "fetched" / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(small.state_dict(), path)
            return str(path)

    monkeypatch.setattr(cache, "_hub", lambda: FakeHub)
    tokenizer = load_vqgan("maskgit-vqgan")
    assert fetched == [("fun-research/TiTok", "maskgit-vqgan-imagenet-f16-256.bin")]
    assert torch.equal(tokenizer.quantize.embedding.weight, small.quantize.embedding.weight)
    monkeypatch.setenv("STELLAR_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="hf download fun-research/TiTok"):
        load_vqgan("maskgit-vqgan")
    assert len(fetched) == 1


def test_mae_initialisation_by_model_id(tmp_path):
    transformers = pytest.importorskip("transformers")
    from stellar.checkpoint.mae import init_encoder_from_mae

    vit = transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=32, patch_size=8,
    )  # fmt: skip
    transformers.ViTMAEModel(vit).save_pretrained(tmp_path / "mae")
    files = {p.name: p for p in (tmp_path / "mae").iterdir()}
    _fake_hf_cache(tmp_path / "hf-home", "facebook/vit-mae-base", files)
    model = create_stellar(
        "stellar-tiny",
        encoder={"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64,
                 "image_size": 32},
    )  # fmt: skip
    init_encoder_from_mae(model, "facebook/vit-mae-base")
    with pytest.raises(FileNotFoundError, match="hf download facebook/vit-mae-large"):
        init_encoder_from_mae(model, "facebook/vit-mae-large")


# ------------------------------------------------------------------ inference, own layout
def test_a_bare_file_logs_the_defaulted_values(tmp_path, caplog):
    save_state_dict(
        to_official(create_stellar("stellar-tiny").state_dict()), tmp_path / "b.safetensors"
    )
    with caplog.at_level(logging.WARNING):
        model = load_stellar(tmp_path / "b.safetensors")
    assert model.config.encoder.num_attention_heads == 4
    assert "defaulted" in caplog.text and "spatial_temp=0.06" in caplog.text
    assert "encoder.num_attention_heads=4" in caplog.text


def test_a_bare_file_with_an_ambiguous_head_count_is_refused(tmp_path):
    enc = {"hidden_size": 128, "num_attention_heads": 8, "intermediate_size": 256}
    state = to_official(create_stellar("stellar-tiny", encoder=enc).state_dict())
    save_state_dict(state, tmp_path / "w128.safetensors")
    with pytest.raises(ValueError, match="number of attention heads of a width-128"):
        load_stellar(tmp_path / "w128.safetensors")


def test_save_pretrained_writes_a_model_card(tmp_path):
    model = create_stellar("stellar-tiny", purpose="reconstruct")
    model.save_pretrained(tmp_path / "run", training={"lr": 0.001}, metrics={"knn top-1": 0.5})
    card = (tmp_path / "run" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: stellar")
    assert "width 96, 3 blocks, 4 heads" in card and "| concept tokens (r) | 6 |" in card
    assert '"lr": 0.001' in card and "| knn top-1 | 0.5 |" in card
    assert "load_stellar(" in card and "pip install stellar-ssl" in card
    assert load_stellar(tmp_path / "run").config == model.config  # the card is no obstacle


# ------------------------------------------------------------------ torch.hub
def test_torch_hub_entry_points_for_every_name():
    for name in ("stellar_b16", "stellar_tiny"):
        model = torch.hub.load(str(REPO), name, pretrained=False, source="local")
        assert isinstance(model, STELLAR)
        assert model.config == get_config(name.replace("_", "-"))
    hubconf = torch.hub.load(str(REPO), "stellar_tiny", pretrained=False, source="local")
    assert hubconf.purpose == "encode"
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf_module)
    for name in list_models():
        assert callable(getattr(hubconf_module, name.replace("-", "_")))


def test_torch_hub_pretrained_preset_says_it_has_no_release():
    with pytest.raises(FileNotFoundError, match="create_stellar"):
        torch.hub.load(str(REPO), "stellar_tiny", pretrained=True, source="local")


@pytest.mark.parametrize("argv", [["--offline", "models"], ["models", "--offline"]])
def test_the_offline_flag_forbids_downloads_for_the_command(monkeypatch, argv, capsys):
    from stellar.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("STELLAR_OFFLINE", "0")  # restored after the test
    assert cache.offline_reason() is None
    assert main(argv) == 0
    assert cache.offline_reason() == "STELLAR_OFFLINE=1"
    assert "stellar-b16" in capsys.readouterr().out
