"""ImageFolder: mode conversion, resizing onto the canvas, labels, broken-file handling."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stellar.data.folder import ImageFolder, validate_image_folder
from stellar.data.loader import build_loader
from stellar.images import load_rgb

S = 64  # canvas side; most test images have their longer side = S so no resampling happens


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _noise_jpeg(path: Path, w: int = 96, h: int = 80, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    return _save(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), path)


def _broken_files(root: Path) -> list[Path]:
    empty = root / "b" / "empty.jpg"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_bytes(b"")
    full = _noise_jpeg(root / "tmp_full.jpg", 200, 200).read_bytes()
    (root / "tmp_full.jpg").unlink()
    trunc = root / "c" / "trunc.jpg"
    trunc.parent.mkdir(parents=True, exist_ok=True)
    trunc.write_bytes(full[: len(full) // 2])
    text = root / "c" / "text.png"
    text.write_text("this is not an image\n")
    return [empty, trunc, text]


def _canvas(ds: ImageFolder, name: str) -> tuple[np.ndarray, tuple[int, int]]:
    idx = next(i for i in range(len(ds)) if ds.path(i).name == name)
    item = ds[idx]
    assert int(item["index"]) == idx
    h, w = item["size"].tolist()
    return item["canvas"].permute(1, 2, 0).numpy(), (h, w)


def test_modes_convert_to_rgb(tmp_path: Path) -> None:
    _save(Image.new("RGB", (S, 40), (200, 30, 60)), tmp_path / "a" / "rgb.jpg", quality=95)
    _save(Image.new("L", (S, S), 77), tmp_path / "a" / "gray.png")
    pal = Image.new("P", (S, S), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (0, 0, S // 2, S))  # left half: index 1 (green), right half: index 0
    _save(pal, tmp_path / "a" / "palette.png", transparency=0)  # index 0 (red) is transparent
    rgba = np.zeros((S, S, 4), np.uint8)
    rgba[:, : S // 2] = (10, 20, 30, 255)
    rgba[:, S // 2 :] = (0, 0, 0, 128)
    _save(Image.fromarray(rgba, "RGBA"), tmp_path / "b" / "rgba.png")
    _save(Image.new("CMYK", (S, S), (255, 0, 0, 0)), tmp_path / "b" / "cmyk.jpg", quality=95)
    grad = np.tile(np.linspace(0, 65535, S).round().astype(np.uint16), (8, 1))
    g16 = Image.fromarray(grad)
    assert g16.mode == "I;16"
    _save(g16, tmp_path / "b" / "g16.png")
    _save(Image.new("LA", (S, S), (50, 0)), tmp_path / "b" / "la.png")

    ds = ImageFolder(tmp_path, canvas_size=S)
    assert len(ds) == 7 and int(ds.broken_mask.sum()) == 0

    c, (h, w) = _canvas(ds, "rgb.jpg")
    assert (h, w) == (40, S)
    assert np.abs(c[:h, :w].astype(int) - (200, 30, 60)).max() <= 3
    assert (c[h:] == 0).all()

    c, _ = _canvas(ds, "gray.png")
    assert (c == 77).all()

    c, _ = _canvas(ds, "palette.png")
    assert (c[:, : S // 2] == (0, 255, 0)).all()
    assert (c[:, S // 2 :] == 255).all()  # transparent -> white background, not red

    c, _ = _canvas(ds, "rgba.png")
    assert (c[:, : S // 2] == (10, 20, 30)).all()
    assert np.abs(c[:, S // 2 :].astype(int) - 127).max() <= 1  # half-transparent black on white

    c, _ = _canvas(ds, "cmyk.jpg")
    assert np.abs(c.astype(int) - (0, 255, 255)).max() <= 3

    c, _ = _canvas(ds, "la.png")
    assert (c == 255).all()  # fully transparent

    c, (h, w) = _canvas(ds, "g16.png")
    assert (h, w) == (8, S)
    row = c[0, :, 0].astype(int)
    assert (c[:h, :, 0] == c[:h, :, 1]).all() and (c[:h, :, 1] == c[:h, :, 2]).all()
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row) >= 0).all() and len(np.unique(row)) > S // 2  # scaled, not clipped
    np.testing.assert_allclose(row, grad[0] / 65535 * 255, atol=1)


def test_resize_longer_side_and_exif(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (50, 100, 3), dtype=np.uint8)
    _save(Image.fromarray(arr), tmp_path / "wide.png")
    tall = Image.fromarray(arr)
    exif = tall.getexif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    _save(tall, tmp_path / "rotated.jpg", exif=exif, quality=95)
    ds = ImageFolder(tmp_path, canvas_size=S)
    assert ds.classes == [] and ds.labels.tolist() == [-1, -1]

    c, (h, w) = _canvas(ds, "wide.png")
    assert (h, w) == (32, S)
    expected = np.asarray(Image.fromarray(arr).resize((S, 32), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(c[:32], expected)
    assert (c[32:] == 0).all()

    _, (h, w) = _canvas(ds, "rotated.jpg")
    assert (h, w) == (S, 32)


def test_a_broken_exif_block_keeps_the_pixels(tmp_path: Path) -> None:
    """PIL's exif_transpose raises on a PNG whose EXIF block has no TIFF header; the image is
    still read (as stored), by files and as a PIL image."""
    from stellar.images import preprocess

    arr = np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    path = _save(Image.fromarray(arr), tmp_path / "bad.png", exif=b"Exif\x00\x00XX\x00*garbage")
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), arr)
    assert ImageFolder(tmp_path, canvas_size=S)[0] is not None
    with Image.open(path) as img:
        assert preprocess(img, 32).shape == (1, 3, 32, 32)


def test_jpeg_draft_close_to_full_decode(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:400, 0:600]
    arr = np.stack([xx * 255 / 600, yy * 255 / 400, (xx + yy) * 255 / 1000], -1)
    _save(Image.fromarray(arr.astype(np.uint8)), tmp_path / "big.jpg", quality=95)
    fast = ImageFolder(tmp_path, canvas_size=S)[0]
    assert fast["size"].tolist() == [43, S]
    full = Image.open(tmp_path / "big.jpg").convert("RGB").resize((S, 43), Image.Resampling.BICUBIC)
    slow = torch.from_numpy(np.array(full)).permute(2, 0, 1)
    diff = (fast["canvas"][:, :43].float() - slow.float()).abs()
    assert diff.mean() < 2.0 and diff.max() < 12


def test_labels_from_class_folders(tmp_path: Path) -> None:
    for cls, n in (("n02", 2), ("n01", 1), ("n03", 1)):
        for k in range(n):
            _noise_jpeg(tmp_path / cls / f"img{k}.JPEG", 20, 16, seed=k)
    _noise_jpeg(tmp_path / "n03" / "nested" / "deep.jpg", 20, 16)
    (tmp_path / "n01" / "notes.txt").write_text("ignored")
    _noise_jpeg(tmp_path / ".hidden" / "x.jpg", 20, 16)
    ds = ImageFolder(tmp_path, canvas_size=32)
    assert ds.classes == ["n01", "n02", "n03"]
    assert len(ds) == 5
    names = [ds.path(i).relative_to(tmp_path).as_posix() for i in range(len(ds))]
    assert names == sorted(names, key=lambda p: p.split("/"))
    for i in range(len(ds)):
        item = ds[i]
        assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
        assert ds.classes[int(item["label"])] == names[i].split("/")[0]
        assert item["canvas"].shape == (3, 32, 32) and item["canvas"].dtype == torch.uint8
        assert item["size"].dtype == torch.int64 and item["size"].tolist() == [26, 32]


def test_files_id_follows_the_files_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paths are absolute, so a run's recorded paths open from anywhere; the id is the same
    through a relative path and changes when a photo is replaced under its name (its size)."""
    for k in range(2):
        _noise_jpeg(tmp_path / "data" / f"img{k}.jpg", 20 + k, 16, seed=k)
    monkeypatch.chdir(tmp_path)
    relative = ImageFolder("data")
    assert all(p.is_absolute() and p.is_file() for p in relative.paths)
    assert ImageFolder(["data/img0.jpg"]).paths == [tmp_path / "data" / "img0.jpg"]
    absolute = ImageFolder(tmp_path / "data")
    assert relative.files_id == absolute.files_id
    _noise_jpeg(tmp_path / "data" / "img0.jpg", 96, 80, seed=5)  # same name, other photo
    assert ImageFolder("data").files_id != absolute.files_id


def test_empty_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected image files"):
        ImageFolder(tmp_path)
    (tmp_path / "readme.txt").write_text("no images here")
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="expected image files"):
        ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        ImageFolder(tmp_path / "readme.txt")


def test_broken_files_warn_once_and_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for k in range(2):
        _noise_jpeg(tmp_path / "a" / f"ok{k}.jpg", 24, 24, seed=k)
    _noise_jpeg(tmp_path / "b" / "ok.jpg", 24, 24, seed=5)
    broken = _broken_files(tmp_path)
    ds = ImageFolder(tmp_path, canvas_size=32)
    assert len(ds) == 6
    paths = [ds.path(i) for i in range(len(ds))]
    caplog.set_level(logging.WARNING, logger="stellar.data.folder")
    for _ in range(2):  # a second epoch must not warn again
        for i in range(len(ds)):
            item = ds[i]
            if paths[i] in broken:
                assert item is None
            else:
                assert int(item["index"]) == i and item["canvas"].shape == (3, 32, 32)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for path in broken:
        assert sum(str(path) in m for m in messages) == 1
    assert len(messages) == 3
    assert int(ds.broken_mask.sum()) == 3
    assert sorted(ds.path(int(i)) for i in ds.broken_mask.nonzero()) == sorted(broken)


def test_a_long_run_of_broken_files_never_crashes(tmp_path: Path) -> None:
    # 40 unreadable files in a row (more than the 32 the old substitution tried) then one image
    for k in range(40):
        (tmp_path / f"a{k:02d}.jpg").write_bytes(b"")
    _noise_jpeg(tmp_path / "z.jpg", 20, 20)
    ds = ImageFolder(tmp_path, canvas_size=16)
    loader = build_loader(ds, batch_size=4, shuffle=False, drop_last=False)
    assert [b["index"].tolist() for b in loader] == [[40]]
    assert int(ds.broken_mask.sum()) == 40


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_like_an_image_is_not_read(tmp_path: Path) -> None:
    _noise_jpeg(tmp_path / "a.jpg", 20, 20)
    os.mkfifo(tmp_path / "b.jpg")  # opening it for reading would block forever
    ds = ImageFolder(tmp_path, canvas_size=16)
    assert [p.name for p in ds.paths] == ["a.jpg"]
    listed = ImageFolder([tmp_path / "a.jpg"], canvas_size=16)
    assert listed[0] is not None
    with pytest.raises(ValueError, match="not a regular file"):
        load_rgb(tmp_path / "b.jpg")


def test_nothing_loadable_is_skipped_and_fails_validation(tmp_path: Path) -> None:
    _broken_files(tmp_path)
    ds = ImageFolder(tmp_path)
    assert ds[0] is None
    with pytest.raises(ValueError, match="readable images"):
        validate_image_folder(tmp_path)
    with pytest.raises(OSError):
        load_rgb(tmp_path / "c" / "trunc.jpg")


def test_one_labelled_folder_check(tmp_path: Path) -> None:
    _noise_jpeg(tmp_path / "flat.jpg", 20, 20)
    _noise_jpeg(tmp_path / "cat" / "x.jpg", 20, 20)
    with pytest.raises(ValueError, match="1 images have no class folder"):
        ImageFolder(tmp_path).require_labels("--train")
    (tmp_path / "flat.jpg").unlink()
    with pytest.raises(ValueError, match="at least 2 classes"):
        ImageFolder(tmp_path).require_labels("--train")
    _noise_jpeg(tmp_path / "dog" / "y.jpg", 20, 20)
    assert ImageFolder(tmp_path).require_labels("--train") == ["cat", "dog"]


def test_validate_passes_with_one_readable_image(tmp_path: Path) -> None:
    _noise_jpeg(tmp_path / "ok.jpg", 20, 20)
    _broken_files(tmp_path)
    ds = validate_image_folder(tmp_path, canvas_size=32)
    assert int(ds.broken_mask.sum()) == 3  # all probed; the broken ones are marked for later


def test_broken_marks_shared_with_workers(tmp_path: Path) -> None:
    for k in range(6):
        _noise_jpeg(tmp_path / "a" / f"ok{k}.jpg", 20, 20, seed=k)
    _broken_files(tmp_path)
    ds = ImageFolder(tmp_path, canvas_size=16)
    loader = build_loader(ds, batch_size=3, num_workers=2, shuffle=True, seed=0, drop_last=False)
    seen = torch.cat([b["index"] for b in loader])
    assert len(seen) == 6 and len(ds) == 9
    assert all(ds.path(int(i)).name.startswith("ok") for i in seen)
    assert int(ds.broken_mask.sum()) == 3  # marks made inside the workers are visible to the parent


@pytest.mark.shared
def test_imagenet_originals_decode(samples_dir: Path) -> None:
    import json

    meta = {e["file"]: e for e in json.loads((samples_dir / "index.json").read_text())}
    ds = ImageFolder(samples_dir / "originals", canvas_size=48)
    assert len(ds) == 49 and ds.classes == []
    for i in range(len(ds)):
        item = ds[i]
        assert int(item["index"]) == i
        w0, h0 = meta[ds.path(i).name]["size"]
        h, w = item["size"].tolist()
        assert max(h, w) == 48 and abs(h / w - h0 / w0) < 2.5 / min(h, w)
        if meta[ds.path(i).name]["mode"] == "L":
            c = item["canvas"]
            assert torch.equal(c[0], c[1]) and torch.equal(c[1], c[2])
    assert int(ds.broken_mask.sum()) == 0
