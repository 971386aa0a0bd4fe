"""EvalImages: resize + centre-crop geometry, labels, broken files, loader collation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stellar.cli import main
from stellar.data.folder import EvalImages, find_images
from stellar.eval.encoder import decodable_batches, make_loader

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _thirds(path: Path, w: int = 300, h: int = 100) -> Path:
    """Left third red, middle green, right third blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 3] = RED
    a[:, w // 3 : 2 * w // 3] = GREEN
    a[:, 2 * w // 3 :] = BLUE
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def _solid(path: Path, color=(10, 20, 30), size=(40, 30), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).convert(mode).save(path)
    return path


@pytest.mark.parametrize("ratio", [1.0, 2.0])
def test_centre_crop_keeps_the_middle(tmp_path: Path, ratio: float) -> None:
    _thirds(tmp_path / "a.png")
    ds = EvalImages(tmp_path, 32, resize_ratio=ratio)
    img = ds[0]["image"]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    # The shorter side (100) becomes 32·ratio, the width 3x that: the centre square is green.
    inner = img[:, 4:-4, 4:-4]
    assert torch.allclose(inner, torch.tensor([0.0, 1.0, 0.0])[:, None, None], atol=0.02)


def test_a_resize_ratio_below_one_is_refused(tmp_path: Path, capsys) -> None:
    """The crop would be larger than the resized image (it was silently taken as 1)."""
    _thirds(tmp_path / "a.png")
    with pytest.raises(ValueError, match="resize_ratio >= 1"):
        EvalImages(tmp_path, 32, resize_ratio=0.5)
    argv = [
        "extract",
        "--model",
        "stellar-tiny",
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "f"),
    ]
    with pytest.raises(SystemExit):  # argparse's usage error, before any work
        main([*argv, "--resize-ratio", "0.5"])
    assert "--resize-ratio: expected a finite number >= 1, got '0.5'" in capsys.readouterr().err


def test_no_crop_squashes_the_whole_image(tmp_path: Path) -> None:
    _thirds(tmp_path / "a.png")
    img = EvalImages(tmp_path, 30, crop=False)[0]["image"]
    assert img.shape == (3, 30, 30)
    expect = {2: RED, 15: GREEN, 27: BLUE}
    for col, rgb in expect.items():
        assert torch.allclose(img[:, 15, col], torch.tensor(rgb) / 255.0, atol=0.05)


def test_resize_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8))
    src.save(tmp_path / "n.png")
    got = EvalImages(tmp_path, 16, resize_ratio=28 / 16)[0]["image"]
    # Independent: shorter side 50 -> 28 (width 80 -> 45), then the central 16x16.
    ref = src.resize((45, 28), Image.Resampling.BICUBIC)
    left, top = round((45 - 16) / 2), round((28 - 16) / 2)
    ref = np.asarray(ref.crop((left, top, left + 16, top + 16)), np.float32) / 255
    assert np.abs(got.permute(1, 2, 0).numpy() - ref).max() < 1e-6


def test_labels_from_class_folders_and_lists(tmp_path: Path) -> None:
    _solid(tmp_path / "dog" / "1.jpg")
    _solid(tmp_path / "cat" / "2.png")
    _solid(tmp_path / "cat" / "sub" / "3.png")
    _solid(tmp_path / "cat" / ".hidden.png")
    ds = EvalImages(tmp_path, 8)
    assert ds.classes == ["cat", "dog"]
    assert [p.name for p in ds.paths] == ["2.png", "3.png", "1.jpg"]
    assert ds.labels.tolist() == [0, 0, 1]
    assert int(ds[2]["label"]) == 1 and int(ds[2]["index"]) == 2
    flat = EvalImages([tmp_path / "dog" / "1.jpg", tmp_path / "cat"], 8)
    assert len(flat) == 3 and flat.labels.tolist() == [-1, -1, -1]
    _solid(tmp_path / "loose.png")  # a file outside class folders: no labels at all
    assert EvalImages(tmp_path, 8).labels.tolist() == [-1] * 4


def test_symlinked_folders_are_followed_once(tmp_path: Path) -> None:
    _solid(tmp_path / "cat" / "1.png")
    (tmp_path / "cat" / "loop").symlink_to(tmp_path)  # cat/loop/cat/loop/... would never end
    (tmp_path / "elsewhere").mkdir()
    _solid(tmp_path / "elsewhere" / "2.png")
    (tmp_path / "dog").symlink_to(tmp_path / "elsewhere")  # a class folder kept elsewhere
    # every real folder is listed once, under the first path that reaches it
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["cat/1.png", "dog/2.png"]


def test_broken_files_are_skipped_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        _solid(tmp_path / f"{i}.png", (i * 50, 0, 0))
    (tmp_path / "1b.png").write_bytes(b"not an image")
    ds = EvalImages(tmp_path, 8)
    assert len(ds) == 4
    with caplog.at_level(logging.WARNING):
        batches = list(make_loader(ds, batch_size=2))
        assert ds[2] is None  # sorted: 0, 1, 1b, 2
    got = torch.cat([b["index"] for b in batches]).tolist()
    assert got == [0, 1, 3]
    assert [b["image"].shape[0] for b in batches] == [2, 1]
    warnings = [r for r in caplog.records if "1b.png" in r.getMessage()]
    assert len(warnings) == 1


def test_decodable_batches_skip_empty_and_fail_when_nothing_decodes(tmp_path: Path) -> None:
    (tmp_path / "0.png").write_bytes(b"")
    (tmp_path / "1.png").write_bytes(b"")
    _solid(tmp_path / "2.png")
    ds = EvalImages(tmp_path, 8)
    batches = list(decodable_batches(ds, batch_size=2, progress=False))
    assert [b["index"].tolist() for b in batches] == [[2]]
    (tmp_path / "2.png").write_bytes(b"")
    with pytest.raises(ValueError, match="decodable image.*found none"):
        list(decodable_batches(EvalImages(tmp_path, 8), batch_size=2, progress=False))


def test_bad_input_raises(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="found none"):
        EvalImages(tmp_path, 8)
    with pytest.raises(ValueError, match="image file or a folder"):
        EvalImages([tmp_path / "missing.jpg"], 8)
    _solid(tmp_path / "a.png")
    with pytest.raises(ValueError, match="resolution"):
        EvalImages(tmp_path, 0)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(EvalImages(tmp_path, 8), batch_size=0)
