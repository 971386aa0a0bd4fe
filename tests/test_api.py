"""The calls of the released model card (SPEC §6), the photo path in, and the pretraining call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import stellar
from stellar import STELLAR, StellarForPretraining, create_stellar, load_stellar, total_loss
from stellar.data.folder import CentreCropView
from stellar.losses.objective import StellarObjective
from stellar.runtime import precision
from stellar.viz.command import load_for_viz

REPO = Path(__file__).resolve().parents[1]
CARD_KEYS = {"sparse", "spatial", "concat", "lowrank", "dense", "cls", "peak_dist"}
LOSS_KEYS = {"koleo_loss", "clustering_loss", "cls_clustering_loss", "mask_loss", "cls_loss"}


@pytest.fixture
def vq_checkpoint(tmp_path, reference_dir):
    """A vq-head model matched to the small reference tokenizer (f2, 64 codes), saved by
    ``save_pretrained`` in the official layout, and the tokenizer's file."""
    tokenizer = reference_dir / "maskgit-vqgan-small" / "weights.safetensors"
    model = create_stellar(
        "stellar-tiny",
        purpose="pretrain",
        decoder_head="vq",
        vq_codebook_size=64,
        encoder={"patch_size": 2, "image_size": 16},
        vq_model=tokenizer,
    )
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt", tokenizer


def test_model_card_snippets_run_verbatim_from_the_checkout(vq_checkpoint, tmp_path):
    """The card's lines, its import included, with our checkpoint and tokenizer paths."""
    ckpt, tokenizer = vq_checkpoint
    card = textwrap.dedent(
        f"""
        import json, torch
        from load_stellar import load_stellar, list_models
        print(list_models())
        model = load_stellar({str(ckpt)!r})
        image = torch.rand(2, 3, 16, 16)
        out = model.encode(image)
        shapes = {{k: list(v.shape) for k, v in out.items()}}
        model = load_stellar({str(ckpt)!r}, purpose="reconstruct", vq_model={str(tokenizer)!r})
        features = model.encode(image)
        rec = model.reconstruct(features)
        again = model.reconstruct(features["sparse"], features["spatial"])
        assert torch.equal(rec["reconstruction"], again["reconstruction"])
        shapes.update({{"rec." + k: list(v.shape) for k, v in rec.items()}})
        lo, hi = float(rec["reconstruction"].min()), float(rec["reconstruction"].max())
        model = load_stellar({str(ckpt)!r}, purpose="pretrain", vq_model={str(tokenizer)!r})
        labels = torch.tensor([3, 5])
        losses = model({{"image": image, "labels": labels}})["predictions"]
        total = model.loss(losses)
        total.backward()
        print(json.dumps({{"shapes": shapes, "range": [lo, hi], "keys": sorted(losses),
                          "grad": float(model.sparse_tokens.grad.abs().sum())}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", card], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    n, r, d = 64, 6, 96  # (16 / 2)^2 patches, stellar-tiny's tokens and width
    shapes = result["shapes"]
    assert shapes["sparse"] == [2, r, d] and shapes["spatial"] == [2, n, r]
    assert shapes["dense"] == shapes["lowrank"] == [2, n, d] and shapes["cls"] == [2, 1, d]
    assert shapes["rec.reconstruction"] == [2, 3, 16, 16]
    assert shapes["rec.tokens"] == [2, n] and shapes["rec.logits"] == [2, n, 64]
    assert 0 <= result["range"][0] <= result["range"][1] <= 1
    assert set(result["keys"]) == CARD_KEYS | LOSS_KEYS | {"VQ-CE", "gold_labels"}
    assert result["grad"] > 0


def _photos(folder: Path) -> list[Path]:
    """Photos of several modes and sizes, saved losslessly."""
    g = torch.Generator().manual_seed(0)
    folder.mkdir()
    paths = []
    for i, (mode, size) in enumerate([("RGB", (90, 60)), ("L", (64, 64)), ("RGBA", (50, 120))]):
        pixels = torch.randint(0, 256, (size[1], size[0], 4), generator=g, dtype=torch.uint8)
        img = Image.fromarray(pixels.numpy(), "RGBA").convert(mode)
        paths.append(folder / f"{i}.png")
        img.save(paths[-1])
    return paths


def test_preprocess_takes_photos_of_any_mode_and_size_as_the_eval_view_does(tmp_path):
    model = create_stellar("stellar-tiny")
    paths = _photos(tmp_path / "photos")
    batch = model.preprocess(paths)
    assert batch.shape == (3, 3, 64, 64) and batch.dtype == torch.float32
    assert batch.min() >= 0 and batch.max() <= 1
    # one transform: the evaluation view at ratio 1 (shorter side to 64, centre crop)
    view = CentreCropView(64, resize_ratio=1.0)
    for row, path in zip(batch, paths, strict=True):
        torch.testing.assert_close(row, view(path)["image"], rtol=0, atol=0)
    torch.testing.assert_close(model.preprocess(Image.open(paths[0])), batch[:1])
    with pytest.raises(TypeError, match="PIL image"):
        model.preprocess({"image": batch})


def test_encode_takes_a_photo_directly(tmp_path):
    model = create_stellar("stellar-tiny")
    path = _photos(tmp_path / "photos")[0]
    with precision("fp32"):
        direct = model.encode(Image.open(path))
        via_batch = model.encode(model.preprocess(path))
    torch.testing.assert_close(direct["sparse"], via_batch["sparse"], rtol=0, atol=0)


def test_sizes_in_the_conventions_of_timm():
    model = create_stellar("stellar-tiny")
    assert model.embed_dim == model.num_features == 96
    assert model.num_tokens == 6 and model.patch_size == 8 and model.image_size == 64


@pytest.fixture
def pixel_model(tmp_path) -> StellarForPretraining:
    create_stellar("stellar-tiny", purpose="pretrain").save_pretrained(tmp_path / "tiny")
    return load_stellar(tmp_path / "tiny", purpose="pretrain")


def test_pretraining_call_runs_the_trainers_objective(pixel_model):
    """The card's call and StellarObjective (what the trainer runs) give the same terms."""
    assert isinstance(pixel_model, STELLAR) and pixel_model.training
    image = torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)
    predictions = pixel_model({"image": image})["predictions"]
    torch.manual_seed(1)
    total, terms = StellarObjective(pixel_model, pixel_model.objective_config)(
        pixel_model.views({"image": image})
    )
    assert set(terms) == LOSS_KEYS | {"MSE"} and set(predictions) >= CARD_KEYS
    for name, value in terms.items():
        torch.testing.assert_close(predictions[name].detach(), value)
    torch.testing.assert_close(pixel_model.loss(predictions).detach(), total)
    by_hand = 10 * predictions["MSE"] + sum(predictions[k] for k in LOSS_KEYS)
    torch.testing.assert_close(total_loss(predictions, 10.0), by_hand)
    torch.testing.assert_close(total_loss(predictions), by_hand)  # the paper's MSE weight


def test_pretraining_call_takes_the_release_mode_and_checks_view_shapes(pixel_model):
    image = torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)
    trained = pixel_model({"image": image}, mode="train")["predictions"]
    assert "MSE" in trained
    with torch.no_grad():
        features = pixel_model({"image": image}, mode="eval")["predictions"]
    assert not any("loss" in k for k in features)
    torch.testing.assert_close(features["sparse"], pixel_model.encode(image)["sparse"])
    flat = torch.rand(6, 3, 64, 64)  # (B*G, ...) instead of (B, G, ...)
    with pytest.raises(ValueError, match=r"global_views of shape \(B, V, 3, H, W\)"):
        pixel_model({"image": image, "global_views": flat})
    # the views are images as the image is: [0, 1] floats, patch multiples, at least one
    for key, views, problem in (
        ("global_views", torch.rand(2, 3, 3, 64, 64) * 255, "in \\[0, 1\\]"),
        ("local_views", torch.zeros(2, 4, 3, 24, 24, dtype=torch.uint8), "floating-point"),
        ("local_views", torch.rand(2, 4, 3, 20, 20), "not divisible by the patch size"),
        ("local_views", torch.rand(2, 0, 3, 24, 24), "non-empty"),
    ):
        with pytest.raises(ValueError, match=f"{key}: .*{problem}"):
            pixel_model({"image": image, key: views})


def test_pretraining_call_uses_the_views_it_is_given(pixel_model):
    image = torch.rand(2, 3, 64, 64)
    global_views = torch.rand(2, 3, 3, 64, 64)
    local_views = torch.rand(2, 4, 3, 24, 24)
    batch = pixel_model.views(
        {"image": image, "global_views": global_views, "local_views": local_views}
    )
    assert torch.equal(batch["image"], image)
    assert batch["masked_views"].shape == (6, 3, 64, 64)  # every global view, masked
    assert batch["keep_idx"].shape == (6, 12)  # 20 % of the 64 patches kept
    assert torch.equal(batch["local_views"], local_views.flatten(0, 1))  # taken as given
    # the views of a kind not given are made from the image
    made = pixel_model.views({"image": image, "global_views": global_views})
    assert made["local_views"].shape[0] == 2 * 8 and made["masked_views"].shape[0] == 6
    made = pixel_model.views({"image": image, "local_views": local_views})
    assert made["masked_views"].shape[0] == 2 * 8 and made["local_views"].shape[0] == 8
    assert "mask_loss" in pixel_model({"image": image, "local_views": local_views})["predictions"]
    predictions = pixel_model({"image": image, "global_views": global_views})["predictions"]
    assert "cls_loss" in predictions
    pixel_model.loss(predictions).backward()
    assert pixel_model.cls_cluster_head.layer.weight.grad.abs().sum() > 0


def test_pretraining_model_saves_and_reloads_as_stellar(pixel_model, tmp_path):
    pixel_model.save_pretrained(tmp_path / "again")
    encoder = load_stellar(tmp_path / "again")
    assert type(encoder) is STELLAR
    torch.testing.assert_close(encoder.sparse_tokens, pixel_model.sparse_tokens)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]  # what a hub repository needs, no lock file
    # a run's folder is no model folder: its latest checkpoint would shadow the saved weights
    run = tmp_path / "run"
    stellar.train("cpu-smoke", out=run, max_steps=1)
    with pytest.raises(ValueError, match="holds the results of stellar train"):
        pixel_model.save_pretrained(run)
    assert not (run / "model.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_a_device_without_cuda_is_one_error(tmp_path):
    create_stellar("stellar-tiny").save_pretrained(tmp_path / "tiny")
    with pytest.raises(ValueError, match="'cuda': this torch build or machine has no cuda"):
        load_stellar(tmp_path / "tiny", device="cuda")


def test_a_photo_is_the_same_input_as_a_path_and_as_a_pil_image(tmp_path):
    # a JPEG far larger than the model's size: decoding it at a reduced scale would differ
    pixels = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=90)
    model = create_stellar("stellar-tiny")
    from_path = model.preprocess(tmp_path / "big.jpg")
    torch.testing.assert_close(from_path, model.preprocess(Image.open(tmp_path / "big.jpg")))
    os.mkfifo(tmp_path / "fifo.jpg")  # opening it to read would block until a writer comes
    for bad in (tmp_path / "missing.jpg", tmp_path, tmp_path / "fifo.jpg"):
        with pytest.raises(ValueError, match=str(bad.name)):
            model.preprocess(bad)


def test_encode_points_the_card_batch_to_the_pretraining_model():
    model = create_stellar("stellar-tiny")
    with pytest.raises(TypeError, match="purpose='pretrain'"):
        model.encode({"image": torch.rand(1, 3, 64, 64)})
    assert "num_tokens=6" in repr(model) and "purpose='encode'" in repr(model)


def test_reconstruct_takes_the_grid_that_encode_returned():
    model = create_stellar("stellar-tiny", purpose="reconstruct")
    out = model.encode(torch.rand(2, 3, 32, 64))
    rec = model.reconstruct(out["sparse"], out["spatial"], grid=out["grid"])
    torch.testing.assert_close(rec["reconstruction"], model.reconstruct(out)["reconstruction"])
    assert rec["reconstruction"].shape == (2, 3, 32, 64)


def test_a_run_folder_loads_with_the_tokenizer_it_trained_with(reference_dir, tmp_path):
    tokenizer = reference_dir / "maskgit-vqgan-small" / "weights.safetensors"  # f2, 64 codes
    architecture = {"decoder_head": "vq", "vq_codebook_size": 64}
    architecture["encoder"] = {"patch_size": 2, "image_size": 32}
    run = tmp_path / "run"
    views = {"augment__global_size": 32, "augment__local_size": 16}
    stellar.train("cpu-smoke", out=run, max_steps=1, vq_model=tokenizer, **views,
                  model_overrides=architecture)  # fmt: skip
    model = load_stellar(run, purpose="reconstruct")  # no vq_model= needed
    with torch.no_grad():
        rec = model.reconstruct(model.encode(torch.rand(1, 3, 32, 32)))["reconstruction"]
    assert rec.shape == (1, 3, 32, 32)
    assert load_stellar(run).tokenizer is None  # encoding needs none
    step = run / "checkpoints" / "last"  # a checkpoint folder of the run knows it too
    assert load_stellar(step, purpose="reconstruct").tokenizer is not None
    model, why = load_for_viz(str(run))  # stellar viz and the explorer draw reconstructions
    assert why is None and model.tokenizer is not None
    # a run continued from it records the tokenizer, so it resumes on its own
    child = tmp_path / "child"
    stellar.train("cpu-smoke", out=child, max_steps=1, init__checkpoint=run, **views)
    assert yaml.safe_load((child / "config.yaml").read_text())["vq_model"] == str(tokenizer)
    stellar.train(out=child, resume=True, max_steps=2)
    assert json.loads((child / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2


def test_overwrite_never_deletes_the_checkpoint_the_run_starts_from(tmp_path):
    run = tmp_path / "run"
    stellar.train("cpu-smoke", out=run, max_steps=1)
    last = (run / "checkpoints" / "last").resolve()
    with pytest.raises(ValueError, match="--overwrite would delete init.checkpoint="):
        stellar.train("cpu-smoke", out=run, max_steps=1, overwrite=True, init__checkpoint=last)
    assert (last / "model.safetensors").is_file()
