"""Segmentation folders: ADE20K and simple layouts, validation errors, ``stellar eval seg``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stellar.cli import main
from stellar.data.folder import EvalImages
from stellar.eval.encoder import extract_features
from stellar.eval.segdata import find_split, load_label_maps

PALETTE = np.array([(220, 30, 30), (30, 200, 40), (30, 40, 220)])


def _pair(images: Path, labels: Path, stem: str, label: np.ndarray, ext: str = ".jpg") -> None:
    """An image coloured by its (ADE-style, 1-based, 0 = other) label map, and the map."""
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    colour = PALETTE[np.clip(label.astype(int) - 1, 0, 2)]
    Image.fromarray(colour.astype(np.uint8)).save(images / f"{stem}{ext}")
    Image.fromarray(label.astype(np.uint8)).save(labels / f"{stem}.png")


def _label(i: int, h: int = 40, w: int = 56) -> np.ndarray:
    lab = np.ones((h, w), np.uint8)
    lab[:, w // 2 :] = 2 + i % 2
    lab[: h // 4] = 3
    lab[-4:, :6] = 0  # "other"
    return lab


def _ade(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    for split, n in (("training", n_train), ("validation", n_val)):
        for i in range(n):
            _pair(root / "images" / split, root / "annotations" / split, f"ADE_{i:03d}", _label(i))
    return root


def test_ade20k_layout_and_zero_label_reduction(tmp_path) -> None:
    root = _ade(tmp_path / "ade")
    train, val = find_split(root, "train"), find_split(root, "val")
    assert (train.layout, len(train.images), len(val.images)) == ("ade20k", 4, 2)
    assert [p.name for p in train.labels] == [f"ADE_{i:03d}.png" for i in range(4)]
    assert [p.stem for p in train.images] == [p.stem for p in train.labels]
    raw = load_label_maps(train.labels, 40, 4, reduce_zero=False, progress=False)
    reduced = load_label_maps(train.labels, 40, 3, reduce_zero=True, progress=False)
    assert raw.shape == (4, 40, 40) and sorted(raw.unique().tolist()) == [0, 1, 2, 3]
    # 0 -> 255 (ignored), k -> k - 1, exactly where the raw map says so
    assert bool(((reduced == 255) == (raw == 0)).all())
    keep = raw != 0
    assert bool((reduced[keep] == raw[keep] - 1).all())
    edge = tmp_path / "edge.png"  # ADE20K's 1..150 become 0..149; 255 stays ignored
    Image.fromarray(np.tile(np.array([0, 1, 150, 255], np.uint8), (4, 1))).save(edge)
    (edge_map,) = load_label_maps([edge], 4, 150, reduce_zero=True, progress=False)
    assert edge_map[0].tolist() == [255, 0, 149, 255]


def test_simple_layout_with_nested_stems(tmp_path) -> None:
    root = tmp_path / "simple"
    for sub in ("a", "b"):
        _pair(root / "images" / sub, root / "masks" / sub, "x", _label(0), ext=".png")
    split = find_split(root, "val")
    assert split.layout == "simple" and [p.parent.name for p in split.labels] == ["a", "b"]
    labels = load_label_maps(split.labels, 16, 4, progress=False)
    assert labels.shape == (2, 16, 16)  # nearest resize keeps only existing labels
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3}


def test_validation_errors_name_the_files(tmp_path) -> None:
    with pytest.raises(ValueError, match="ADE20K layout"):
        find_split(tmp_path, "train")
    root = tmp_path / "s"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    with pytest.raises(ValueError, match="expected image files"):
        find_split(root, "train")
    _pair(root / "images", root / "labels", "one", _label(0))
    _pair(root / "images", root / "other", "two", _label(1))
    with pytest.raises(ValueError, match=r"2 images .* but 1 label maps.*two\.jpg"):
        find_split(root, "train")
    _pair(root / "other", root / "labels", "three", _label(1))
    with pytest.raises(ValueError, match=r"without a label map: two\.jpg.*without an image: three"):
        find_split(root, "train")
    os.remove(root / "labels" / "three.png")
    Image.fromarray(_label(1, 30, 30)).save(root / "labels" / "two.png")
    with pytest.raises(ValueError, match=r"two\.jpg 56x40 vs two\.png 30x30"):
        find_split(root, "train")
    Image.new("RGB", (56, 40)).save(root / "labels" / "two.png")
    with pytest.raises(ValueError, match=r"single-channel.*two\.png \(RGB\)"):
        find_split(root, "train")
    Image.fromarray(_label(1)).save(root / "labels" / "two.png")
    split = find_split(root, "train")
    with pytest.raises(ValueError, match=r"one\.png|two\.png"):
        load_label_maps(split.labels, 16, num_classes=2, progress=False)  # label 3 >= 2
    ade = _ade(tmp_path / "ade", n_val=0)
    with pytest.raises(ValueError, match="lacks images/validation"):
        find_split(ade, "val")


def test_label_maps_follow_the_image_as_the_model_sees_it(tmp_path) -> None:
    # a JPEG stored 60 wide x 40 high with EXIF orientation 6: the model sees it 40 x 60
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(stored).save(tmp_path / "images" / "a.jpg", exif=exif.tobytes(), quality=95)
    red = np.asarray(Image.open(tmp_path / "images" / "a.jpg").rotate(-90, expand=True)) > 127
    shown = red[..., 0].astype(np.uint8)  # 40 wide, 60 high: where the red half is displayed
    Image.fromarray(shown.T.copy()).save(tmp_path / "masks" / "a.png")  # stored orientation
    with pytest.raises(
        ValueError, match=r"after the image's EXIF orientation.*40x60 vs a\.png 60x40"
    ):
        find_split(tmp_path, "train")
    Image.fromarray(shown.astype(bool)).save(tmp_path / "masks" / "a.png")  # a mode "1" mask
    split = find_split(tmp_path, "train")
    (label,) = load_label_maps(split.labels, 16, 2, progress=False)
    image = EvalImages(split.images, 16, crop=False)[0]["image"]
    agree = ((image[0] > 0.5).long() == label.long()).float().mean()
    assert agree > 0.9  # the red half of the displayed image is the labelled half


def test_a_file_that_is_no_image_is_named_before_any_work(tmp_path) -> None:
    _pair(tmp_path / "images", tmp_path / "masks", "a", _label(0))
    for path in (tmp_path / "images" / "a.jpg", tmp_path / "masks" / "a.png"):
        path.write_bytes(b"not an image")
        with pytest.raises(ValueError, match=f"expected an image file, got {path}"):
            find_split(tmp_path, "train")
        _pair(tmp_path / "images", tmp_path / "masks", "a", _label(0))


def test_truncated_label_map_is_named(tmp_path) -> None:
    _pair(tmp_path / "images", tmp_path / "masks", "a", _label(0))
    path = tmp_path / "masks" / "a.png"
    path.write_bytes(path.read_bytes()[:-40])
    split = find_split(tmp_path, "train")  # the header is intact
    with pytest.raises(ValueError, match=r"expected readable label maps, got .*a\.png"):
        load_label_maps(split.labels, 16, 4, progress=False)


def test_seg_end_to_end_and_errors(tmp_path, capsys, monkeypatch) -> None:
    import stellar.eval.segmentation as seg

    batches = []  # --batch-size batches the encoder, as in every protocol

    def spy(*args, **kwargs):
        batches.append(kwargs["batch_size"])
        return extract_features(*args, **kwargs)

    monkeypatch.setattr(seg, "extract_features", spy)
    root = _ade(tmp_path / "ade", 4, 2)
    out = tmp_path / "out"
    argv = ["eval", "seg", "--model", "stellar-tiny", "--train", str(root), "--num-classes", "3"]
    run = ["--reduce-zero-label", "--epochs", "3", "--batch-size", "3", "--out", str(out)]
    assert main([*argv, *run]) == 0
    assert batches == [3, 3]
    m = json.loads((out / "metrics.json").read_text())
    assert m["layout"] == {"train": "ade20k", "val": "ade20k"}
    (row,) = m["rows"]
    assert row["key"] == "dense" and 0.0 <= row["miou"] <= 1.0 and len(row["iou_per_class"]) == 3
    assert "mIoU %" in capsys.readouterr().out
    with pytest.raises(ValueError, match="expected label values"):  # 0..3 without reduction
        main([*argv, "--out", str(out)])
    os.remove(root / "annotations" / "validation" / "ADE_001.png")
    with pytest.raises(ValueError, match="ADE_001"):
        main([*argv, "--reduce-zero-label", "--out", str(out)])


def test_seg_on_sample_photos(samples_dir, tmp_path) -> None:
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for p in sorted((samples_dir / "images224").glob("*.jpg"))[:6]:
        os.symlink(p, root / "images" / p.name)
        grey = np.asarray(Image.open(p).convert("L"))
        Image.fromarray((grey > 127).astype(np.uint8)).save(root / "masks" / f"{p.stem}.png")
    out = tmp_path / "out"
    argv = ["eval", "seg", "--model", "stellar-tiny", "--train", str(root), "--val", str(root)]
    assert main([*argv, "--num-classes", "2", "--epochs", "2", "--out", str(out)]) == 0
    (row,) = json.loads((out / "metrics.json").read_text())["rows"]
    assert row["num_train"] == 6 and 0.0 <= row["pixel_acc"] <= 1.0
