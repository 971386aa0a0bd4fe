"""Sharded feature extraction: content, index, resume, simulated ranks, the CLI."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from stellar import create_stellar
from stellar.cli import main
from stellar.data.folder import EvalImages
from stellar.eval.encoder import extract_features
from stellar.eval.extract import extract_to_dir
from stellar.eval.shards import load_features, shard_name

RES = 32  # stellar-tiny (patch 8) at a 4x4 grid keeps every test fast


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_stellar("stellar-tiny").eval()


def _images(root: Path, n: int, classes: int = 2) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        path = root / f"c{i % classes}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(path)
    return root


def _meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def test_shards_match_in_memory_features(model, tmp_path: Path) -> None:
    ds = EvalImages(_images(tmp_path / "data", 7), RES)
    out = tmp_path / "out"
    keys = ["sparse", "cls", "spatial", "dense"]
    written = extract_to_dir(model, ds, out, keys, shard_size=3, batch_size=2, progress=False)
    assert written == [0, 1, 2]
    assert sorted(p.name for p in out.glob("shard-*")) == [shard_name(g) for g in range(3)]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["count"] == 7 and meta["keys"] == keys

    feats = load_features(out)
    labels, paths = feats["labels"], feats["paths"]
    ref = extract_features(model, ds, keys, batch_size=4, progress=False)
    assert ref["indices"].tolist() == list(range(7))
    for k in keys:
        assert feats[k].shape == ref[k].shape and feats[k].dtype == torch.float32
        torch.testing.assert_close(feats[k], ref[k], atol=1e-5, rtol=1e-5)
    assert feats["sparse"].shape == (7, model.num_tokens, 96)
    assert feats["spatial"].shape == (7, (RES // 8) ** 2, model.num_tokens)
    assert labels.tolist() == ds.labels.tolist() == ref["labels"].tolist()
    assert paths == [str(p) for p in ds.paths]

    with safe_open(str(out / shard_name(1)), framework="pt") as f:  # images 3, 4, 5
        assert f.get_tensor("index").tolist() == [3, 4, 5]
        assert json.loads(f.metadata()["paths"]) == [str(p) for p in ds.paths[3:6]]


def test_resume_skips_complete_shards(model, tmp_path: Path) -> None:
    ds = EvalImages(_images(tmp_path / "data", 5), RES)
    out = tmp_path / "out"
    kw = dict(keys=["sparse"], shard_size=2, batch_size=2, progress=False)
    assert extract_to_dir(model, ds, out, **kw) == [0, 1, 2]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    (out / shard_name(1)).unlink()
    meta = _meta(out)
    (out / "meta.json").write_text(json.dumps({**meta, "complete": False, "count": None}))
    assert extract_to_dir(model, ds, out, **kw) == [1]
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert after[shard_name(0)] == before[shard_name(0)]
    assert after[shard_name(2)] == before[shard_name(2)]
    assert _meta(out)["complete"] and _meta(out)["count"] == 5
    assert extract_to_dir(model, ds, out, **kw) == []  # nothing left to do
    assert not list(out.glob(".*tmp"))  # no temp files left behind


def test_two_ranks_cover_disjointly(model, tmp_path: Path) -> None:
    ds = EvalImages(_images(tmp_path / "data", 9), RES)
    out = tmp_path / "out"
    kw = dict(keys=["cls", "sparse"], shard_size=2, batch_size=2, progress=False, world_size=2)
    first = extract_to_dir(model, ds, out, rank=0, **kw)
    assert first == [0, 2, 4]
    assert not _meta(out)["complete"]
    with pytest.raises(ValueError, match="incomplete"):
        load_features(out)
    second = extract_to_dir(model, ds, out, rank=1, **kw)
    assert second == [1, 3]
    assert not set(first) & set(second)
    indices = []
    for g in first + second:
        with safe_open(str(out / shard_name(g)), framework="pt") as f:
            indices += f.get_tensor("index").tolist()
    assert sorted(indices) == list(range(9))
    feats = load_features(out, keys=["cls"])
    assert set(feats) == {"cls", "labels", "indices", "paths", "classes"}
    assert feats["cls"].shape == (9, 1, 96)
    assert _meta(out)["count"] == 9
    ref = extract_features(model, ds, ["cls"], batch_size=9, progress=False)
    assert feats["classes"] == ref["classes"] == ds.classes and len(ds.classes) > 1
    torch.testing.assert_close(feats["cls"], ref["cls"], atol=1e-5, rtol=1e-5)


def test_broken_file_left_out(model, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _images(tmp_path / "data", 4, classes=1)
    (root / "c0" / "001b.png").write_bytes(b"\x89PNG broken")
    ds = EvalImages(root, RES)
    with caplog.at_level(logging.WARNING):
        extract_to_dir(model, ds, tmp_path / "out", ["sparse"], shard_size=2, progress=False)
    feats = load_features(tmp_path / "out")
    paths = feats["paths"]
    assert feats["sparse"].shape[0] == 4 and len(paths) == 4
    assert not any(p.endswith("001b.png") for p in paths)
    assert sum("001b.png" in r.getMessage() for r in caplog.records) == 1


def test_an_extraction_with_no_decodable_image_is_refused(model, tmp_path: Path) -> None:
    """As extract_features and viz: no readable image is an error, not an empty success."""
    (tmp_path / "bad.jpg").write_text("not an image")
    ds = EvalImages(tmp_path / "bad.jpg", RES)
    with pytest.raises(ValueError, match="none of the 1 files decoded"):
        extract_to_dir(model, ds, tmp_path / "out", ["sparse"], progress=False)
    assert not (tmp_path / "out").exists()  # nothing to resume: the folder it made is gone
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="none of the 1 files decoded"):
        extract_to_dir(model, ds, tmp_path / "out", ["sparse"], progress=False)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"  # the user's file stays
    assert not [*(tmp_path / "out").glob("shard-*"), *(tmp_path / "out").glob("meta.json")]


def test_fp16_and_setting_mismatch(model, tmp_path: Path) -> None:
    ds = EvalImages(_images(tmp_path / "data", 2), RES)
    out = tmp_path / "out"
    extract_to_dir(model, ds, out, ["spatial"], fp16=True, progress=False)
    feats = load_features(out)
    assert feats["spatial"].dtype == torch.float16
    torch.testing.assert_close(
        feats["spatial"].float().sum(-1), torch.ones(2, 16), atol=1e-2, rtol=0
    )
    with pytest.raises(ValueError, match="other settings"):
        extract_to_dir(model, ds, out, ["spatial"], fp16=False, progress=False)
    with pytest.raises(ValueError, match="feature keys"):
        extract_to_dir(model, ds, tmp_path / "o2", ["pixels"], progress=False)
    with pytest.raises(ValueError, match="not"):
        load_features(out, keys=["sparse"])


def test_precision_is_recorded_and_a_resume_must_match_it(model, tmp_path: Path) -> None:
    from stellar.runtime import precision

    ds = EvalImages(_images(tmp_path / "data", 3), RES)
    for name in ("fp32", "bf16"):
        with precision(name):  # what autocast's auto means inside the block is recorded
            extract_to_dir(model, ds, tmp_path / name, ["sparse"], progress=False)
    meta = json.loads((tmp_path / "bf16" / "meta.json").read_text())
    assert meta["precision"] == "bf16"
    exact, fast = (load_features(tmp_path / d)["sparse"] for d in ("fp32", "bf16"))
    assert not torch.equal(exact, fast)  # bf16 autocast really ran
    torch.testing.assert_close(fast, exact, atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match="precision 'fp32' \\(this run: 'bf16'"), precision("bf16"):
        extract_to_dir(model, ds, tmp_path / "fp32", ["sparse"], progress=False)
    assert json.loads((tmp_path / "fp32" / "meta.json").read_text())["precision"] == "fp32"


def test_cli_extract(tmp_path: Path) -> None:
    root = _images(tmp_path / "data", 3)
    out = tmp_path / "out"
    argv = ["extract", "--model", "stellar-tiny", "--data", str(root), "--out", str(out)]
    argv += ["--keys", "sparse,dense", "--resolution", "16", "--num-workers", "0"]
    assert main([*argv, "--precision", "fp32"]) == 0
    assert json.loads((out / "meta.json").read_text())["precision"] == "fp32"
    feats = load_features(out)
    labels = feats["labels"]
    assert feats["sparse"].shape == (3, 6, 96) and feats["dense"].shape == (3, 4, 96)
    assert labels.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="patch size"):
        main([*argv[:-4], "--resolution", "20"])


@pytest.mark.shared
def test_cli_extract_samples(samples_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for photo in sorted((samples_dir / "images224").glob("*"))[:6]:
        (data / photo.name).symlink_to(photo)
    out = tmp_path / "out"
    argv = ["extract", "--model", "stellar-tiny", "--data", str(data), "--out", str(out)]
    assert main([*argv, "--shard-size", "4", "--num-workers", "0", "--fp16"]) == 0
    feats = load_features(out)
    labels, paths = feats["labels"], feats["paths"]
    assert feats["sparse"].shape == (6, 6, 96) and feats["sparse"].dtype == torch.float16
    assert torch.isfinite(feats["cls"].float()).all()
    assert labels.tolist() == [-1] * 6 and len(set(paths)) == 6


def test_resume_refuses_shards_of_other_weights(model, tmp_path: Path) -> None:
    ds = EvalImages(_images(tmp_path / "data", 4), RES)
    out = tmp_path / "out"
    extract_to_dir(model, ds, out, ["cls"], shard_size=2, progress=False)
    (out / shard_name(1)).unlink()  # interrupted: one shard left to do
    torch.manual_seed(7)
    retrained = create_stellar("stellar-tiny").eval()  # same name and shapes, other weights
    with pytest.raises(ValueError, match="other settings .*weights"):
        extract_to_dir(retrained, ds, out, ["cls"], shard_size=2, progress=False)
    assert not (out / shard_name(1)).exists()  # nothing of the other model was merged in


def test_non_finite_features_are_refused(model, tmp_path: Path) -> None:
    ds = EvalImages(_images(tmp_path / "data", 2), RES)
    diverged = create_stellar("stellar-tiny").eval()
    diverged.load_state_dict(model.state_dict())
    with torch.no_grad():
        diverged.encoder.patch_embed.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite sparse"):
        extract_to_dir(diverged, ds, tmp_path / "out", ["sparse"], progress=False)
    # a feature folder that holds NaN (written by an older version) is refused when read
    out = tmp_path / "ok"
    extract_to_dir(model, ds, out, ["cls"], progress=False)
    from safetensors.torch import load_file, save_file

    shard = out / shard_name(0)
    tensors = load_file(str(shard))
    with safe_open(str(shard), framework="pt") as f:
        metadata = f.metadata()
    tensors["cls"][0, 0, 0] = float("inf")
    save_file(tensors, str(shard), metadata=metadata)
    with pytest.raises(ValueError, match="non-finite cls"):
        load_features(out)


def test_cli_extract_checks_the_output_folder_first(tmp_path: Path, monkeypatch) -> None:
    import stellar.hub

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(stellar.hub, "load_model", no_loading)
    (tmp_path / "file").write_text("not a folder")
    argv = ["extract", "--model", "stellar-tiny", "--data", str(_images(tmp_path / "d", 2))]
    with pytest.raises(ValueError, match="is a file; expected a folder"):
        main([*argv, "--out", str(tmp_path / "file")])


@pytest.mark.slow
def test_cli_extract_compiled_matches_eager(tmp_path: Path) -> None:
    root = _images(tmp_path / "data", 3)
    argv = ["extract", "--model", "stellar-tiny", "--data", str(root), "--num-workers", "0"]
    argv += ["--keys", "sparse", "--resolution", "16", "--precision", "fp32"]
    assert main([*argv, "--out", str(tmp_path / "eager")]) == 0
    assert main([*argv, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    eager, compiled = (load_features(tmp_path / d)["sparse"] for d in ("eager", "compiled"))
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_the_weights_fingerprint_covers_every_tensor_features_read(tmp_path):
    """Issue 22, item 2: a model whose encoder blocks differ has another fingerprint; the parts
    no feature reads (decoder, heads) do not change it."""
    from stellar import create_stellar, load_stellar
    from stellar.eval.encoder import weights_fingerprint

    model = create_stellar("stellar-tiny", purpose="pretrain")
    model.save_pretrained(tmp_path / "m")
    encode = load_stellar(tmp_path / "m")
    assert weights_fingerprint(encode) == weights_fingerprint(
        load_stellar(tmp_path / "m", purpose="reconstruct")
    )
    with torch.no_grad():
        encode.encoder.blocks[1].mlp.fc1.weight[0, 0] += 1e-4
    assert weights_fingerprint(encode) != weights_fingerprint(load_stellar(tmp_path / "m"))


# ---------------------------------------------------------------- issue 22: one guard per folder
def _two_models(tmp_path: Path) -> tuple[Path, Path]:
    folders = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        folders.append(create_stellar("stellar-tiny").save_pretrained(tmp_path / f"m{seed}"))
    return folders[0], folders[1]


def test_two_extractions_into_one_folder_leave_one_models_features(tmp_path: Path) -> None:
    """Item 1: two writers race for one --out; one is refused, the folder holds one model's."""
    import subprocess
    import sys

    from stellar import load_stellar
    from stellar.eval.encoder import weights_fingerprint

    data, out = _images(tmp_path / "data", 6), tmp_path / "out"
    models = _two_models(tmp_path)
    argv = ["--data", str(data), "--out", str(out), "--shard-size", "1", "--num-workers", "0"]
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "stellar", "extract", "--model", str(m), *argv],
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in models
    ]
    codes = [r.wait(timeout=300) for r in runs]
    errors = [r.stderr.read() for r in runs]
    assert sorted(codes) == [0, 2], errors
    loser = errors[codes.index(2)].strip().splitlines()[-1]
    # the holder is named once its record is written; in the instant before, "another process"
    assert "is in use by" in loser or "other settings" in loser, loser
    winner = models[codes.index(0)]
    features = load_features(out)  # every shard checked against meta.json
    assert _meta(out)["weights"] == weights_fingerprint(load_stellar(winner))
    assert features["sparse"].shape[0] == 6


def test_extract_refuses_a_folder_another_job_holds(
    model, tmp_path: Path, held_by_another_process
) -> None:
    out = tmp_path / "out"
    ds = EvalImages(_images(tmp_path / "data", 2), RES)
    refused = pytest.raises(ValueError, match="in use by stellar extract .*pid")
    with held_by_another_process(out, "stellar extract"), refused:
        extract_to_dir(model, ds, out, ["cls"], progress=False)
    assert not list(out.glob("shard-*")) and not (out / "meta.json").exists()


def test_a_shard_of_another_model_is_never_read_or_kept(tmp_path: Path) -> None:
    """Item 1: a shard copied from another model's folder is refused by name when read, and
    extracted again by a resume."""
    from stellar import load_stellar

    ds = EvalImages(_images(tmp_path / "data", 4), RES)
    a, b = (load_stellar(m).eval() for m in _two_models(tmp_path))
    kw = dict(keys=["cls"], shard_size=2, progress=False)
    extract_to_dir(a, ds, tmp_path / "a", **kw)
    extract_to_dir(b, ds, tmp_path / "b", **kw)
    foreign = (tmp_path / "b" / shard_name(1)).read_bytes()
    (tmp_path / "a" / shard_name(1)).write_bytes(foreign)
    with pytest.raises(ValueError, match=f"{shard_name(1)} .*another extraction"):
        load_features(tmp_path / "a")
    meta = _meta(tmp_path / "a")
    (tmp_path / "a" / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    assert extract_to_dir(a, ds, tmp_path / "a", **kw) == [1]  # redone with the right model
    ref = extract_features(a, ds, ["cls"], batch_size=4, progress=False)["cls"]
    torch.testing.assert_close(load_features(tmp_path / "a")["cls"], ref)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("num_shards edited", "meta.json is damaged or was edited"),
        ("meta.json corrupt", "meta.json is damaged or was edited"),
        ("shard deleted", f"{shard_name(1)} is unreadable"),
        ("shard truncated", f"{shard_name(1)} is unreadable"),
        ("rows dropped", f"{shard_name(1)} .*disagree on the number of images"),
        ("count edited", "holds 5 images' features, but meta.json counted 4"),
    ],
)
def test_a_damaged_feature_folder_is_one_error_naming_the_file(
    model, tmp_path: Path, damage: str, expected: str
) -> None:
    """Items 8 and 10: eval never reads half a folder or crashes on one."""
    from safetensors.torch import load_file, save_file

    ds = EvalImages(_images(tmp_path / "data", 5), RES)
    out = tmp_path / "out"
    extract_to_dir(model, ds, out, ["cls"], shard_size=2, progress=False)
    meta, shard = _meta(out), out / shard_name(1)
    if damage == "num_shards edited":
        (out / "meta.json").write_text(json.dumps({**meta, "num_shards": 1}))
    elif damage == "meta.json corrupt":
        (out / "meta.json").write_text('{"model": ')
    elif damage == "shard deleted":
        shard.unlink()
    elif damage == "shard truncated":
        shard.write_bytes(shard.read_bytes()[:-50])
    elif damage == "rows dropped":
        with safe_open(str(shard), framework="pt") as f:
            metadata = f.metadata()
        save_file({k: v[:1] for k, v in load_file(str(shard)).items()}, str(shard), metadata)
    else:
        (out / "meta.json").write_text(json.dumps({**meta, "count": 4}))
    with pytest.raises(ValueError, match=expected):
        load_features(out)
    if damage in ("shard truncated", "rows dropped"):  # a rerun extracts that shard again
        (out / "meta.json").write_text(json.dumps({**meta, "complete": False}))
        assert extract_to_dir(model, ds, out, ["cls"], shard_size=2, progress=False) == [1]
        assert load_features(out)["cls"].shape[0] == 5


def test_overwrite_replaces_an_extraction_of_other_settings(model, tmp_path: Path) -> None:
    ds = EvalImages(_images(tmp_path / "data", 3), RES)
    out = tmp_path / "out"
    extract_to_dir(model, ds, out, ["cls"], shard_size=1, progress=False)
    with pytest.raises(ValueError, match="other settings .*shard_size.*--overwrite"):
        extract_to_dir(model, ds, out, ["cls"], shard_size=2, progress=False)
    assert extract_to_dir(model, ds, out, ["cls"], shard_size=2, overwrite=True, progress=False)
    assert sorted(p.name for p in out.glob("shard-*")) == [shard_name(0), shard_name(1)]
    assert load_features(out)["cls"].shape[0] == 3


def test_temporaries_of_a_killed_extraction_are_removed(model, tmp_path: Path) -> None:
    """Item 4: a kill leaves `.shard-*.tmp` (atomic_write's) and `.tmpXXXXXX` (safetensors')."""
    ds = EvalImages(_images(tmp_path / "data", 2), RES)
    out = tmp_path / "out"
    out.mkdir()
    left = [out / ".shard-00000.safetensors.a1b2c3d4.tmp", out / ".tmpAB12cd"]
    for path in left:
        path.write_bytes(b"x" * 1000)
    extract_to_dir(model, ds, out, ["cls"], progress=False)
    assert not any(p.exists() for p in left)


def test_oversized_batch_and_worker_counts_cost_nothing(tmp_path: Path) -> None:
    """Item 8/10: `--batch-size 99999999999999999999` and `--num-workers 100000 --shard-size 1`
    used to crash and hang."""
    from stellar.eval.encoder import make_loader

    ds = EvalImages(_images(tmp_path / "data", 3), RES)
    loader = make_loader(ds, 99999999999999999999, 100000)
    assert loader.batch_size == 3 and loader.num_workers == 1
    with warnings.catch_warnings():  # torch warns of more workers than this machine's cores
        warnings.simplefilter("ignore")
        assert make_loader(ds, 1, 100000).num_workers == 3


@pytest.mark.slow
def test_torchrun_extract_matches_one_process_and_holds_the_folder(tmp_path: Path) -> None:
    """Two ranks write disjoint shards into one folder that rank 0 holds until both are done."""
    import subprocess
    import sys

    root = _images(tmp_path / "data", 7)
    argv = ["extract", "--model", "stellar-tiny", "--data", str(root), "--keys", "cls"]
    argv += ["--shard-size", "2", "--num-workers", "0", "--precision", "fp32"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc_per_node", "2", "-m", "stellar", *argv, "--out"]
    done = subprocess.run([*torchrun, str(tmp_path / "two")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    two, one = (load_features(tmp_path / d) for d in ("two", "one"))
    torch.testing.assert_close(two["cls"], one["cls"])
    assert two["paths"] == one["paths"] and _meta(tmp_path / "two")["count"] == 7


def test_another_image_folder_of_the_same_size_is_not_taken_for_done_work(model, tmp_path):
    """The settings identify the files: the same counts and class names of other images are
    other settings, so no shard of them is mixed in."""
    first = EvalImages(_images(tmp_path / "a", 4), RES)
    second_root = tmp_path / "b"
    for path in _images(tmp_path / "a2", 4).rglob("*.png"):
        target = second_root / path.parent.name / f"other-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    out = tmp_path / "out"
    extract_to_dir(model, first, out, ["cls"], shard_size=2, progress=False)
    with pytest.raises(ValueError, match="other settings \\(files differ\\)"):
        extract_to_dir(model, EvalImages(second_root, RES), out, ["cls"], 2, progress=False)


def test_a_consistently_shortened_shard_is_redone_not_recounted(model, tmp_path):
    """A shard whose last row was removed from every tensor and from its paths: its files no
    longer cover its range, so eval refuses it and a rerun extracts it again."""
    from safetensors.torch import load_file, save_file

    ds = EvalImages(_images(tmp_path / "data", 5), RES)
    out = tmp_path / "out"
    extract_to_dir(model, ds, out, ["cls"], shard_size=2, progress=False)
    shard = out / shard_name(1)
    with safe_open(str(shard), framework="pt") as f:
        metadata = f.metadata()
    metadata["paths"] = json.dumps(json.loads(metadata["paths"])[:1])
    save_file({k: v[:1] for k, v in load_file(str(shard)).items()}, str(shard), metadata)
    with pytest.raises(ValueError, match=f"{shard_name(1)} .*not the files of its range"):
        load_features(out)
    assert extract_to_dir(model, ds, out, ["cls"], shard_size=2, progress=False) == [1]
    assert load_features(out)["cls"].shape[0] == 5 and _meta(out)["count"] == 5


def test_the_model_is_known_by_its_weights_not_its_spelling(tmp_path):
    from stellar import load_stellar

    folder = _two_models(tmp_path)[0]
    ds = EvalImages(_images(tmp_path / "data", 3), RES)
    out = tmp_path / "out"
    model = load_stellar(folder)
    extract_to_dir(model, ds, out, ["cls"], shard_size=2, progress=False, model_spec=str(folder))
    (out / shard_name(1)).unlink()
    spelled = f"{folder}/"
    assert extract_to_dir(model, ds, out, ["cls"], shard_size=2, progress=False, model_spec=spelled)


def test_ctrl_c_during_extract_is_one_line_that_says_how_to_resume(
    model, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Issue 22: Ctrl-C printed an empty message; the finished shards are kept."""
    import stellar.eval.extract
    from stellar.cli import console

    real = stellar.eval.extract.write_shard
    calls = []

    def interrupted_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(real(*args, **kwargs))

    monkeypatch.setattr(stellar.eval.extract, "write_shard", interrupted_after_one)
    root, out = _images(tmp_path / "data", 4), tmp_path / "out"
    argv = ["extract", "--model", "stellar-tiny", "--data", str(root), "--out", str(out)]
    argv += ["--shard-size", "2", "--num-workers", "0", "--keys", "cls"]
    assert console(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "run the same command to resume" in err[-1], err
    assert [p.name for p in out.glob("shard-*")] == [shard_name(0)]
    monkeypatch.setattr(stellar.eval.extract, "write_shard", real)
    assert console(argv) == 0 and _meta(out)["count"] == 4


def test_a_folder_of_another_version_is_refused_not_resumed(model, tmp_path: Path) -> None:
    """A meta.json with a setting this version no longer records (as extractions recorded
    "decoding" before 2026-12-07) is another extraction: resuming it would rewrite every shard
    under a new id and leave the folder unreadable; --overwrite replaces it."""
    from stellar.eval.shards import settings_id

    ds = EvalImages(_images(tmp_path / "data", 3), RES)
    out = tmp_path / "out"
    extract_to_dir(model, ds, out, ["cls"], shard_size=2, progress=False)
    meta = _meta(out)
    meta["decoding"] = "full"
    meta.update(complete=False, id=settings_id(meta))  # as the older version wrote it
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="other settings \\(recorded by another version\\)"):
        extract_to_dir(model, ds, out, ["cls"], shard_size=2, progress=False)
    extract_to_dir(model, ds, out, ["cls"], shard_size=2, overwrite=True, progress=False)
    assert len(load_features(out, ["cls"])["cls"]) == 3
