"""stellar.extract_features: a folder, a list of files or PIL images in; one row per image out."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stellar import create_stellar
from stellar.eval.encoder import extract_features
from stellar.runtime import precision

RES = 32  # stellar-tiny (patch 8) at a 4x4 grid


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_stellar("stellar-tiny").eval()


def _photos(root: Path) -> list[Path]:
    """Images of different sizes and modes, in the folder's scan order."""
    rng = np.random.default_rng(0)
    specs = [
        ("a", (50, 40), "RGB"),
        ("b", (33, 70), "L"),
        ("c", (64, 64), "RGBA"),
        ("d", (90, 45), "P"),
    ]
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (w, h), mode in specs:
        rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img = rgb.convert(mode) if mode != "RGBA" else rgb.convert("RGBA")  # opaque alpha
        paths.append(root / f"{name}.png")
        img.save(paths[-1])
    return paths


def _release_view(path: Path) -> torch.Tensor:
    """The release's preprocessing, by hand: bicubic short side -> RES, centre crop, [0, 1]."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    k = RES / min(w, h)
    size = (max(RES, round(w * k)), max(RES, round(h * k)))
    img = img.resize(size, Image.Resampling.BICUBIC)
    left, top = round((size[0] - RES) / 2), round((size[1] - RES) / 2)
    img = img.crop((left, top, left + RES, top + RES))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


def test_folder_files_and_pil_images_give_the_rows_of_encode(model, tmp_path: Path) -> None:
    paths = _photos(tmp_path / "photos")
    batch = torch.stack([_release_view(p) for p in paths])
    keys = ("sparse", "cls", "spatial")
    with precision("fp32"):
        ref = model.encode(batch)
        from_folder = extract_features(model, tmp_path / "photos", keys, 3, resolution=RES)
        from_files = extract_features(model, [str(p) for p in paths[::-1]], keys, resolution=RES)
        pils = [Image.open(p) for p in paths]
        from_pil = extract_features(model, pils, keys, resolution=RES, progress=False)
    assert from_folder["paths"] == [str(p) for p in paths]
    assert from_files["paths"] == [str(p) for p in paths[::-1]]
    assert from_pil["paths"] == [str(p) for p in paths]  # PIL's own file name
    assert from_folder["labels"].tolist() == [-1] * 4
    for k in keys:
        assert from_folder[k].shape == (4, *ref[k].shape[1:])
        torch.testing.assert_close(from_folder[k], ref[k].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(from_files[k], ref[k].float().flip(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(from_pil[k], ref[k].float(), atol=1e-5, rtol=0)


def test_rows_match_encode_of_model_preprocess(model, tmp_path: Path) -> None:
    paths = _photos(tmp_path / "photos")
    with precision("fp32"):
        ref = model.encode(model.preprocess(paths))  # the release's preprocessing, native size
        out = extract_features(model, tmp_path / "photos", ("sparse", "lowrank"), progress=False)
    for k in ("sparse", "lowrank"):
        torch.testing.assert_close(out[k], ref[k].float(), atol=1e-5, rtol=0)


def test_pooled_features_and_class_folders(model, tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        _photos(tmp_path / "data" / cls)
    with precision("fp32"):
        out = extract_features(model, tmp_path / "data", ("sparse", "dense"), pool=True)
        tokens = extract_features(model, tmp_path / "data", ("sparse",), resolution=RES * 2)
    assert out["sparse"].shape == (8, 96) and out["dense"].shape == (8, 96)
    assert out["labels"].tolist() == [0] * 4 + [1] * 4 and out["classes"] == ["cat", "dog"]
    assert [Path(p).parent.name for p in out["paths"]] == ["cat"] * 4 + ["dog"] * 4
    assert tokens["sparse"].shape == (8, model.num_tokens, 96)


def test_a_broken_file_is_skipped_and_reported(model, tmp_path: Path, caplog) -> None:
    paths = _photos(tmp_path / "photos")
    broken = tmp_path / "photos" / "b2.png"
    broken.write_bytes(b"\x89PNG not really")
    with caplog.at_level(logging.WARNING):
        out = extract_features(model, tmp_path / "photos", ("cls",), resolution=RES)
    assert out["paths"] == [str(p) for p in paths]  # b2.png sorts between b and c
    assert out["indices"].tolist() == [0, 1, 3, 4]
    assert out["cls"].shape[0] == 4
    assert "b2.png" in caplog.text and "skipped 1 unreadable" in caplog.text
    with pytest.raises(ValueError, match=r"image in 1 image file\(s\) given \(the first: .*b2.png"):
        extract_features(model, [broken], ("cls",), resolution=RES)  # no object repr


def test_one_key_one_image_and_a_generator_are_taken_as_given(model, tmp_path: Path) -> None:
    paths = _photos(tmp_path / "photos")
    with precision("fp32"):
        every = extract_features(model, [Image.open(p) for p in paths], "cls", resolution=RES)
        one = extract_features(model, Image.open(paths[0]), "cls", resolution=RES)
        streamed = extract_features(model, (Image.open(p) for p in paths), "cls", resolution=RES)
    assert set(every) == {"cls", "labels", "indices", "paths", "classes"}
    assert every["classes"] == []
    torch.testing.assert_close(one["cls"], every["cls"][:1])
    torch.testing.assert_close(streamed["cls"], every["cls"])  # no image lost to a look-ahead
    with pytest.raises(TypeError, match="encode"):
        extract_features(model, torch.rand(2, 3, RES, RES), "cls")
    with pytest.raises(TypeError, match="Image.fromarray"):
        extract_features(model, np.zeros((2, RES, RES, 3), np.uint8), "cls")


def test_the_command_and_the_call_are_one_pass(model, tmp_path: Path) -> None:
    from stellar.data.folder import EvalImages
    from stellar.eval.extract import extract_to_dir
    from stellar.eval.shards import load_features

    _photos(tmp_path / "photos")
    ratio = 256 / 224  # stellar extract's default, the evaluation view
    dataset = EvalImages(tmp_path / "photos", RES, ratio)
    with precision("fp32"):
        extract_to_dir(model, dataset, tmp_path / "out", ["sparse"], progress=False)
        call = extract_features(
            model, tmp_path / "photos", "sparse", resolution=RES, resize_ratio=ratio
        )
    shards = load_features(tmp_path / "out")
    assert shards.keys() == call.keys() and shards["paths"] == call["paths"]
    torch.testing.assert_close(shards["sparse"], call["sparse"], rtol=0, atol=0)
    torch.testing.assert_close(shards["indices"], call["indices"], rtol=0, atol=0)
