"""``stellar eval linear|knn``: end to end through the CLI, feature folders, input errors."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stellar import create_stellar
from stellar.cli import main
from stellar.data.folder import EvalImages
from stellar.eval.common import format_table
from stellar.eval.encoder import extract_features, pool_features
from stellar.eval.features import LabelledFeatures
from stellar.eval.knn import knn_accuracy
from stellar.eval.shards import load_features, read_meta
from stellar.runtime import encoding_dtype

COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def _colour_folder(root: Path, per_class: int, classes=tuple(COLOURS), seed: int = 0) -> Path:
    """Noisy solid-colour images, one class sub-folder per colour (linearly separable)."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-25, 25, (40, 52, 3))
            a = np.clip(np.array(COLOURS[name])[None, None] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{name}{i}.png")
    return root


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("colours")
    # the val folder has 2 of the 3 classes: its labels must be re-indexed by class name
    return (
        _colour_folder(root / "train", 4),
        _colour_folder(root / "val", 2, ("blue", "red"), seed=1),
    )


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_linear_and_knn_read_colour_classes(colours, tmp_path, capsys) -> None:
    train, val = colours
    base = ["--model", "stellar-tiny", "--train", str(train), "--val", str(val), "--no-progress"]
    assert main(["eval", "linear", *base, "--out", str(tmp_path / "lin")]) == 0
    knn_args = ["--out", str(tmp_path / "knn"), "--k", "3", "--precision", "fp32"]
    assert main(["eval", "knn", *base, *knn_args]) == 0
    lin, knn = _metrics(tmp_path / "lin"), _metrics(tmp_path / "knn")
    auto = "bf16" if encoding_dtype(torch.device("cpu")) else "fp32"  # what auto resolves to
    assert lin["settings"]["precision"] == auto and knn["settings"]["precision"] == "fp32"
    (row,) = lin["rows"]
    assert row["kind"] == "stellar" and row["key"] == "sparse"
    assert row["num_train"] == 12 and row["num_val"] == 4
    # chance is 1/3; colour is linearly readable even from a random model's concept tokens
    assert row["top1"] >= 0.75 and knn["rows"][0]["top1"] >= 0.75
    assert lin["settings"]["epochs"] == 30 and knn["rows"][0]["k"] == 3
    table = capsys.readouterr().out
    assert "top-1 %" in table and "stellar-tiny" in table
    # one protocol's results per folder: linear does not replace knn's metrics.json
    with pytest.raises(ValueError, match="holds the results of stellar eval knn"):
        main(["eval", "linear", *base, "--out", str(tmp_path / "knn")])
    assert _metrics(tmp_path / "knn") == knn


def test_augmented_linear_runs(colours, tmp_path) -> None:
    train, val = colours
    out = tmp_path / "aug"
    argv = ["eval", "linear", "--model", "stellar-tiny", "--train", str(train), "--val", str(val)]
    assert main([*argv, "--augmented", "--epochs", "2", "--key", "cls", "--out", str(out)]) == 0
    m = _metrics(out)
    assert m["augmented"] is True
    (row,) = m["rows"]
    assert row["key"] == "cls" and 0.0 <= row["top1"] <= row["top5"] <= 1.0


def test_extract_folders_give_the_same_features(colours, tmp_path) -> None:
    train, val = colours
    for name, folder in (("ftrain", train), ("fval", val)):
        argv = ["extract", "--model", "stellar-tiny", "--data", str(folder)]
        assert (
            main(
                [*argv, "--out", str(tmp_path / name), "--keys", "sparse,cls", "--num-workers", "0"]
            )
            == 0
        )
    torch.manual_seed(0)  # what both commands do before building the random preset
    model = create_stellar("stellar-tiny").eval()
    view = EvalImages(val, 64, resize_ratio=256 / 224)  # the view `stellar eval` reads
    direct = extract_features(model, view, ["cls"], pool=True, progress=False)
    stored = load_features(tmp_path / "fval", ["cls"])
    torch.testing.assert_close(pool_features(stored["cls"]), direct["cls"], rtol=1e-5, atol=1e-5)
    assert stored["labels"].tolist() == direct["labels"].tolist() == [0, 0, 1, 1]

    out = tmp_path / "knn"
    argv = ["eval", "knn", "--model", "stellar-tiny", "--key", "cls", "--out", str(out)]
    feats = ["--train-features", str(tmp_path / "ftrain"), "--val-features", str(tmp_path / "fval")]
    assert main([*argv, *feats, "--k", "5"]) == 0
    images = ["--train", str(train), "--val", str(val), "--out", str(tmp_path / "knn2")]
    assert main([*argv[:-2], *images, "--k", "5"]) == 0
    a, b = _metrics(out)["rows"][0], _metrics(tmp_path / "knn2")["rows"][0]
    assert (a["top1"], a["top5"]) == (b["top1"], b["top5"])
    with pytest.raises(ValueError, match="lack 'dense'"):
        main([*argv, "--key", "dense", *feats])
    other = ["extract", "--model", "stellar-tiny", "--data", str(val), "--resolution", "32"]
    assert (
        main([*other, "--out", str(tmp_path / "f32"), "--keys", "cls", "--num-workers", "0"]) == 0
    )
    mixed = ["--train-features", str(tmp_path / "ftrain"), "--val-features", str(tmp_path / "f32")]
    with pytest.raises(ValueError, match="f32.*resolution 32 \\(this run: 64\\)"):
        main([*argv, *mixed])


def test_val_classes_are_aligned_by_name() -> None:
    # train classes a, b, c; val holds only c then a: its labels 0, 1 mean c, a
    x = torch.eye(3)
    train = LabelledFeatures(x, torch.tensor([0, 1, 2]), ["a", "b", "c"])
    val = LabelledFeatures(torch.stack([x[2], x[0]]), torch.tensor([0, 1]), ["c", "a"])
    val_y = val.labels_in(train.classes)
    assert knn_accuracy(train.x, train.y, val.x, val_y, 3, k=1)["top1"] == 1.0
    stranger = LabelledFeatures(x[:1], torch.tensor([0]), ["z"])
    with pytest.raises(ValueError, match="do not exist in the training set"):
        stranger.labels_in(train.classes)


def test_extract_keeps_class_names_of_nested_class_folders(tmp_path) -> None:
    # train/<class>/img/*.png: the parent folder of every image is "img", not its class
    _colour_folder(tmp_path / "flat", 2, ("green", "red"))
    for name in ("green", "red"):
        (tmp_path / "nested" / name).mkdir(parents=True)
        os.rename(tmp_path / "flat" / name, tmp_path / "nested" / name / "img")
    out = tmp_path / "feats"
    argv = ["extract", "--model", "stellar-tiny", "--data", str(tmp_path / "nested")]
    assert main([*argv, "--out", str(out), "--keys", "cls", "--num-workers", "0"]) == 0
    assert read_meta(out)["classes"] == ["green", "red"]


def test_bad_inputs_fail_before_any_work(colours, tmp_path) -> None:
    train, val = colours
    empty = tmp_path / "empty"
    empty.mkdir()
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "x.png")
    base = ["eval", "linear", "--model", "stellar-tiny", "--out", str(tmp_path / "o")]
    with pytest.raises(ValueError, match="found none"):
        main([*base, "--train", str(empty), "--val", str(val)])
    with pytest.raises(ValueError, match="class"):
        main([*base, "--train", str(train), "--val", str(flat)])
    with pytest.raises(ValueError, match="--train"):
        main([*base, "--val", str(val)])
    stranger = _colour_folder(tmp_path / "stranger", 1, ("blue", "green"))
    os.rename(stranger / "green", stranger / "purple")
    with pytest.raises(ValueError, match=r"\['purple'\] .* have no folder in --train"):
        main([*base, "--train", str(val), "--val", str(stranger)])
    with pytest.raises(ValueError, match="--augmented"):
        main([*base, "--augmented", "--train-features", str(tmp_path), "--val", str(val)])
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.parametrize(
    "protocol,option,value",
    [
        ("linear", "--epochs", "0"),
        ("linear", "--lr", "-1"),
        ("linear", "--probe-batch-size", "0"),
        ("knn", "--k", "0"),
        ("knn", "--temperature", "0"),
        ("seg", "--epochs", "0"),
        ("recon", "--decoder-depth", "0"),
        ("invariance", "--shift", "0"),
        ("linear", "--key", "foo"),
        ("seg", "--key", "sparse"),  # a feature STELLAR has, but not a grid of patches
        ("recon", "--key", "sparse"),
    ],
)
def test_bad_options_fail_before_the_model_is_loaded(
    protocol, option, value, tmp_path, capsys
) -> None:
    # the model path does not exist: the option must be rejected before anything is loaded
    argv = ["eval", protocol, "--model", str(tmp_path / "missing.safetensors"), option, value]
    argv += ["--data", str(tmp_path)] if protocol == "invariance" else []
    argv += ["--num-classes", "3"] if protocol == "seg" else []
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        main([*argv, "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert f"argument {option}: " in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_missing_folder_is_named_and_leaves_no_output_folder(tmp_path) -> None:
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=r"expected --train \(or --train-features\) .* got none"):
        main(["eval", "knn", "--model", "stellar-tiny", "--out", str(out)])
    assert not out.exists()  # the refused run's folder went with it


def test_images_and_features_of_one_split_are_refused_together(tmp_path) -> None:
    """Without a --baseline row nothing reads --train beside --train-features: not ignored."""
    argv = ["eval", "knn", "--model", "stellar-tiny", "--out", str(tmp_path / "o")]
    (data := tmp_path / "d").mkdir()
    argv += ["--train", str(data), "--train-features", str(data), "--val", str(data)]
    with pytest.raises(ValueError, match="pass --train or --train-features \\(both: only with"):
        main(argv)
    assert not (tmp_path / "o").exists()


def test_format_table_aligns_columns() -> None:
    text = format_table(
        [("model", lambda r: r["m"]), ("top-1 %", lambda r: f"{r['a']:.2f}")],
        [{"m": "a", "a": 1.0}, {"m": "longer", "a": 99.5}],
    )
    lines = text.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert lines[2].endswith(" 1.00") and lines[3].startswith("longer")


def test_samples_linear_and_knn(samples_dir, tmp_path) -> None:
    photos = sorted((samples_dir / "images224").glob("*.jpg"))[:12]
    for split, chunk in (("train", photos[:8]), ("val", photos[8:])):
        for i, p in enumerate(chunk):  # two pseudo-classes by position
            d = tmp_path / split / f"c{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            os.symlink(p, d / p.name)
    base = ["--model", "stellar-tiny", "--train", str(tmp_path / "train")]
    base += ["--val", str(tmp_path / "val"), "--no-progress"]
    assert main(["eval", "linear", *base, "--epochs", "3", "--out", str(tmp_path / "l")]) == 0
    assert main(["eval", "knn", *base, "--key", "lowrank", "--out", str(tmp_path / "k")]) == 0
    for name, n_val in (("l", 4), ("k", 4)):
        (row,) = _metrics(tmp_path / name)["rows"]
        assert row["num_val"] == n_val and 0.0 <= row["top1"] <= row["top5"] <= 1.0


def test_feature_folders_of_another_model_are_refused(colours, tmp_path, caplog) -> None:
    train, val = colours
    torch.manual_seed(3)
    other = create_stellar("stellar-tiny").save_pretrained(tmp_path / "other")
    for name, folder in (("ftrain", train), ("fval", val)):
        argv = ["extract", "--model", str(other), "--data", str(folder), "--keys", "cls"]
        assert main([*argv, "--out", str(tmp_path / name), "--num-workers", "0"]) == 0
    feats = ["--train-features", str(tmp_path / "ftrain"), "--val-features", str(tmp_path / "fval")]
    base = ["eval", "knn", "--key", "cls", "--k", "3", "--out", str(tmp_path / "o")]
    assert main([*base, "--model", str(other), *feats]) == 0
    stored = json.loads((tmp_path / "ftrain" / "meta.json").read_text())["precision"]
    assert _metrics(tmp_path / "o")["settings"]["precision"] == stored  # what the probe read
    # a probe reading features of two precisions says so; metrics.json has the k it used
    other_precision = {"bf16": "fp32", "fp32": "bf16"}[stored]
    mixed = ["--train-features", str(tmp_path / "ftrain"), "--val", str(val), "--k", "50"]
    assert main([*base, "--model", str(other), *mixed, "--precision", other_precision]) == 0
    assert "mixes features encoded in bf16 and fp32" in caplog.text
    assert _metrics(tmp_path / "o")["rows"][0]["k"] == 12  # the training set's size
    assert _metrics(tmp_path / "o")["settings"]["precision"] == "bf16 and fp32"
    # the preset's random weights are not the ones the features were extracted with
    with pytest.raises(ValueError, match="ftrain.*weights '"):
        main([*base, "--model", "stellar-tiny", *feats])
    mixed = ["--train-features", str(tmp_path / "ftrain"), "--val", str(val)]
    with pytest.raises(ValueError, match="ftrain.*resolution 64 \\(this run: 32\\)"):
        main([*base, "--model", str(other), *mixed, "--resolution", "32"])
    argv = ["extract", "--model", str(other), "--data", str(val), "--keys", "cls"]
    squashed = ["--resize-ratio", "1.0", "--num-workers", "0", "--out", str(tmp_path / "fsq")]
    assert main([*argv, *squashed]) == 0
    mixed = ["--train", str(train), "--val-features", str(tmp_path / "fsq")]
    with pytest.raises(ValueError, match="fsq.*resize_ratio 1.0 \\(this run: 1.14"):
        main([*base, "--model", str(other), *mixed])
    flat = ["--num-workers", "0", "--out", str(tmp_path / "flat")]  # one class: no class folders
    assert main([*argv[:4], str(val / "blue"), *argv[5:], *flat]) == 0
    mixed = ["--train", str(train), "--val-features", str(tmp_path / "flat")]
    with pytest.raises(
        ValueError, match="2 classes \\(sub-folders\\) in --val-features .*flat.*none"
    ):
        main([*base, "--model", str(other), *mixed])


def test_a_probe_needs_two_classes_and_says_when_it_scores_on_its_training_set(
    colours, tmp_path, caplog
) -> None:
    train, _ = colours
    one = _colour_folder(tmp_path / "one", 3, ("red",))
    argv = ["extract", "--model", "stellar-tiny", "--keys", "cls", "--num-workers", "0"]
    assert main([*argv, "--data", str(one), "--out", str(tmp_path / "f1")]) == 0
    base = ["eval", "knn", "--model", "stellar-tiny", "--key", "cls", "--out", str(tmp_path / "o")]
    for split in ("--train", "--val"):  # from a folder and from its features alike
        bad = {"--train": str(train), "--val": str(train), split: str(one)}
        with pytest.raises(ValueError, match=f"2 classes \\(sub-folders\\) in {split} .*'red'"):
            main([*base, *itertools.chain(*bad.items())])
        bad = {"--train": str(train), "--val": str(train), split: None}
        bad = {k: v for k, v in bad.items() if v} | {f"{split}-features": str(tmp_path / "f1")}
        with pytest.raises(
            ValueError, match=f"2 classes \\(sub-folders\\) in {split}-features .*'red'"
        ):
            main([*base, *itertools.chain(*bad.items())])
    assert "training set" not in caplog.text
    assert main([*base, "--train", str(train), "--val", str(train)]) == 0
    assert "--val is the training set" in caplog.text
    caplog.clear()  # the same images as features of one and files of the other
    assert main([*argv, "--data", str(train), "--out", str(tmp_path / "ft")]) == 0
    assert main([*base, "--train-features", str(tmp_path / "ft"), "--val", str(train)]) == 0
    assert "--val is the training set" in caplog.text


def test_eval_checks_the_output_folder_before_any_work(colours, tmp_path, monkeypatch) -> None:
    import stellar.hub

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(stellar.hub, "load_model", no_loading)
    train, val = colours
    (tmp_path / "file").write_text("not a folder")
    argv = ["eval", "linear", "--model", "stellar-tiny", "--train", str(train), "--val", str(val)]
    with pytest.raises(ValueError, match="is a file; expected a folder"):
        main([*argv, "--out", str(tmp_path / "file")])
