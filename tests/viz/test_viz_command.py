"""``stellar viz``: figures at 2x the native resolution, metrics, the encoder-only fallback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stellar import create_stellar
from stellar.cli import main
from stellar.viz.command import render_figure


def _photos(root: Path, n: int = 2) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = np.zeros((90, 120, 3), np.uint8)
        a[:, :60] = (200, 40, 40)
        a[20:70, 70:110] = (30, 200, 60)
        a = np.clip(a + rng.integers(0, 40, a.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(root / f"im{i}.png")
    return root


def test_viz_at_twice_native_resolution(tmp_path: Path) -> None:
    images = _photos(tmp_path / "imgs", 1)
    out = tmp_path / "out"
    argv = ["viz", "--model", "stellar-tiny", "--images", str(images), "--out", str(out)]
    assert main([*argv, "--resolution", "128"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["0000_im0.png"]
    fig = Image.open(pngs[0])
    assert fig.width >= 6 * 128  # six panels: the pixel-head decoder reconstructs
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["grid"] == [16, 16] and metrics["reconstruction"] is None
    (row,) = metrics["images"]
    assert row["path"] == str(images / "im0.png") and row["figure"] == "0000_im0.png"
    # each row of L sums to 1 over the r = 6 tokens, so the peaks add up to at least 1
    assert 1 <= row["tokens_owning_patches"] <= 6 and 1 / 6 <= row["mean_peak"] <= 1


def test_viz_without_decoder_omits_reconstruction(tmp_path: Path, capsys) -> None:
    ckpt = create_stellar("stellar-tiny").save_pretrained(tmp_path / "ckpt")
    images = _photos(tmp_path / "imgs", 2)
    out = tmp_path / "out"
    argv = ["viz", "--model", str(ckpt), "--images", str(images / "im1.png"), str(images)]
    assert main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "omitted" in metrics["reconstruction"] and "decoder" in metrics["reconstruction"]
    assert [Path(m["path"]).name for m in metrics["images"]] == ["im1.png", "im0.png", "im1.png"]
    assert len(list(out.glob("*.png"))) == 3
    assert Image.open(out / "0000_im1.png").width < 6 * 160  # five panels (160 px at least)
    printed = capsys.readouterr().out  # the table: one row per figure with its image
    assert "tokens owning patches" in printed and "0001_im0.png" in printed
    with pytest.raises(ValueError, match="patch size"):
        main([*argv, "--out", str(out), "--resolution", "60"])


def test_render_figure_panels() -> None:
    model = create_stellar("stellar-tiny").eval()
    image = torch.rand(3, 64, 64)
    with torch.no_grad():
        out = {k: v[0] for k, v in model.encode(image[None]).items()}
    with_rec = render_figure(image, out, (8, 8), reconstruction=image, cell=64)
    without = render_figure(image, out, (8, 8), cell=64)
    assert with_rec.width - without.width >= 64


@pytest.mark.shared
def test_viz_samples(samples_dir: Path, tmp_path: Path) -> None:
    photos = sorted((samples_dir / "images224").glob("*"))[:6]
    out = tmp_path / "out"
    argv = ["viz", "--model", "stellar-tiny", "--images", *map(str, photos), "--out", str(out)]
    assert main(argv) == 0
    assert len(list(out.glob("*.png"))) == 6
    assert len(json.loads((out / "metrics.json").read_text())["images"]) == 6


def _small_vq_tokenizer(path: Path, codes: int) -> Path:
    from safetensors.torch import save_file

    from stellar.models.vqgan import MaskGITVQGAN

    vq = MaskGITVQGAN(
        hidden_channels=32, channel_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=32,
        codebook_size=codes,
    )  # fmt: skip
    save_file(vq.state_dict(), str(path))
    return path


def test_load_for_viz_falls_back_only_without_decoder_or_tokenizer(tmp_path, monkeypatch):
    import stellar.hub as hub
    from stellar.viz.command import load_for_viz

    reads = []
    real_read = hub.read_state_dict
    monkeypatch.setattr(hub, "read_state_dict", lambda p: reads.append(p) or real_read(p))
    enc = create_stellar("stellar-tiny").save_pretrained(tmp_path / "enc")
    vq = create_stellar("stellar-tiny", purpose="reconstruct", decoder_head="vq")
    vq = vq.save_pretrained(tmp_path / "vq")
    good = _small_vq_tokenizer(tmp_path / "vq1024.safetensors", 1024)

    model, why = load_for_viz(str(enc))
    assert model.decoder is None and "no reconstruction decoder" in why
    model, why = load_for_viz(str(vq))
    assert model.decoder is None and "--vq-model" in why
    model, why = load_for_viz(str(vq), str(good))
    assert why is None and model.tokenizer is not None
    assert len(reads) == 3  # the decoder is found from the header: each checkpoint read once

    # A --vq-model that is wrong is an error, never a silently missing panel.
    not_vq = tmp_path / "enc" / "model.safetensors"
    for bad, message in [
        (not_vq, "not a MaskGIT-VQGAN state dict"),
        (_small_vq_tokenizer(tmp_path / "vq64.safetensors", 64), "codebook of 64 codes"),
        (tmp_path / "missing.bin", "never downloaded"),
    ]:
        with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
            load_for_viz(str(vq), str(bad))
        assert str(bad) in str(err.value)
    with pytest.raises(ValueError, match="no reconstruction decoder"):
        load_for_viz(str(enc), str(good))  # asked for reconstructions the file cannot give


def test_cli_viz_bad_vq_model_fails(tmp_path):
    vq = create_stellar("stellar-tiny", purpose="reconstruct", decoder_head="vq")
    vq = vq.save_pretrained(tmp_path / "vq")
    images = _photos(tmp_path / "imgs", 1)
    argv = ["viz", "--model", str(vq), "--images", str(images), "--out", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="not a MaskGIT-VQGAN"):
        main([*argv, "--vq-model", str(vq / "model.safetensors")])
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--images", "/nonexistent/dir"], "/nonexistent/dir"),  # the error names the path
        (["--resolution", "60"], "patch size 8"),
        (["--resolution", "0"], "argument --resolution: expected an integer >= 1"),
        (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
        (["--out", "FILE"], "is a file; expected a folder"),
    ],
)
def test_viz_checks_arguments_before_loading_the_model(
    tmp_path, monkeypatch, capsys, extra, message
):
    import stellar.hub

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(stellar.hub, "load_model", no_loading)
    monkeypatch.setattr(stellar.hub, "load_stellar", no_loading)
    ckpt = create_stellar("stellar-tiny").save_pretrained(tmp_path / "ckpt")
    images = _photos(tmp_path / "imgs", 1)
    (tmp_path / "file").write_text("a file, not a folder")
    extra = [str(tmp_path / "file") if x == "FILE" else x for x in extra]
    argv = ["viz", "--model", str(ckpt)]
    if "--out" not in extra:
        argv += ["--out", str(tmp_path / "out")]
    if "--images" not in extra:
        argv += ["--images", str(images)]
    if message.startswith("argument "):  # a number: argparse's usage error
        with pytest.raises(SystemExit):
            main([*argv, *extra])
        assert message in capsys.readouterr().err
    else:
        with pytest.raises(ValueError, match=message):
            main([*argv, *extra])


def _crash_after_partial_png(monkeypatch) -> None:
    """Every PNG write leaves a few bytes then fails (a kill or a full disk mid-write)."""

    def partial(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", partial)


def test_viz_outputs_are_written_atomically(tmp_path: Path, monkeypatch) -> None:
    images = _photos(tmp_path / "imgs", 1)
    out = tmp_path / "out"
    argv = ["viz", "--model", "stellar-tiny", "--images", str(images), "--out", str(out)]
    assert main(argv) == 0

    def results():  # the lock file records its holder, who changes
        return {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}

    before = results()
    _crash_after_partial_png(monkeypatch)
    with pytest.raises(ValueError, match="could not write .*No space"):
        main([*argv, "--overwrite"])
    # the interrupted run left the previous figure whole, and no temporary file behind
    assert results() == before


def test_an_earlier_viz_is_replaced_only_with_overwrite_and_never_mixed(tmp_path: Path) -> None:
    """Issue 22: a second viz into one --out left the first one's extra figures beside its own."""
    images = _photos(tmp_path / "imgs", 3)
    out = tmp_path / "out"
    argv = ["viz", "--model", "stellar-tiny", "--images", str(images), "--out", str(out)]
    assert main(argv) == 0
    (out / "notes.png").write_bytes(b"the user's own file")
    one = ["viz", "--model", "stellar-tiny", "--images", str(images / "im0.png"), "--out", str(out)]
    with pytest.raises(ValueError, match="already holds an earlier viz's figures .*--overwrite"):
        main(one)
    assert main([*one, "--overwrite"]) == 0
    listed = {r["figure"] for r in json.loads((out / "metrics.json").read_text())["images"]}
    assert len(listed) == 1
    assert {p.name for p in out.glob("*.png")} == listed | {"notes.png"}


def test_a_folder_is_one_kind_of_jobs_and_never_inside_its_inputs(tmp_path: Path) -> None:
    """eval into a viz folder would replace viz's metrics.json and orphan its figures; an
    output folder inside --images / --data would be read as images by the next run."""
    images = _photos(tmp_path / "imgs", 1)
    out = tmp_path / "out"
    viz = ["viz", "--model", "stellar-tiny", "--images", str(images)]
    assert main([*viz, "--out", str(out)]) == 0
    before = (out / "metrics.json").read_bytes()
    eval_knn = ["eval", "knn", "--model", "stellar-tiny", "--train", str(images)]
    with pytest.raises(ValueError, match="holds the results of stellar viz"):
        main([*eval_knn, "--val", str(images), "--out", str(out)])
    assert (out / "metrics.json").read_bytes() == before
    with pytest.raises(ValueError, match="inside the input folder"):
        main([*viz, "--out", str(images / "figures")])
    retrieve = ["retrieve", "--model", "stellar-tiny", "--query", str(images / "im0.png")]
    with pytest.raises(ValueError, match="inside the input folder"):
        main([*retrieve, "--token", "0", "--data", str(images), "--out", str(images / "r")])
    extract = ["extract", "--model", "stellar-tiny", "--data", str(images)]
    train = ["train", "--config", "cpu-smoke", "data.source=folder", f"data.root={images}"]
    for inside in (
        [*extract, "--out", str(images / "f")],
        [*eval_knn, "--val", str(images), "--out", str(images / "e")],
        [*train, f"out={images / 'run'}"],
    ):
        with pytest.raises(ValueError, match="inside the input folder"):
            main(inside)
    assert sorted(p.name for p in images.iterdir()) == ["im0.png"]  # nothing was created
    # a hidden folder is never scanned; hidden files (.DS_Store, .lock) are no one's results
    assert main([*viz, "--out", str(images / ".figures")]) == 0
    for result in [out / "metrics.json", *out.glob("*.png")]:
        result.unlink()
    (out / ".DS_Store").write_text("")
    with pytest.raises(ValueError, match="expected labelled images"):  # past the folder guard
        main([*eval_knn, "--val", str(images), "--out", str(out)])
