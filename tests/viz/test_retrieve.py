"""Concept retrieval: token index, exact search, save/load, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stellar import create_stellar
from stellar.cli import main
from stellar.data.folder import EvalImages
from stellar.viz.token_index import TokenIndex, build_token_index, query_index

RES = 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_stellar("stellar-tiny").eval()


def _images(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(4)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        a[: 10 + 5 * i, :20] = (255 - 40 * i, 40 * i, 90)
        Image.fromarray(a).save(root / f"img{i}.png")
    return root


def test_index_layout_and_self_retrieval(model, tmp_path: Path) -> None:
    ds = EvalImages(_images(tmp_path / "data"), RES, resize_ratio=1.0)
    index = build_token_index(model, ds, batch_size=4, model_spec="tiny")
    r = model.num_tokens
    assert len(index) == 6 * r and index.vectors.shape == (6 * r, 96)
    torch.testing.assert_close(index.vectors.norm(dim=1), torch.ones(6 * r))
    assert index.image.tolist() == [i for i in range(6) for _ in range(r)]
    assert index.token.tolist() == list(range(r)) * 6
    assert index.paths == [str(p) for p in ds.paths]

    with torch.no_grad():
        sparse = model.encode(ds[3]["image"][None])["sparse"][0]  # (r, d), unnormalised
    scores, rows = query_index(index, sparse[4], k=5)
    assert rows[0] == 3 * r + 4  # rows are image-major
    assert abs(float(scores[0]) - 1) < 1e-5
    assert scores.shape == (5,) and (scores[:-1] >= scores[1:]).all()

    # Every token of image 3 finds itself.
    assert [int(query_index(index, t, k=2)[1][0]) for t in sparse] == [3 * r + t for t in range(r)]


def test_query_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(5)
    bank = F.normalize(torch.randn(50, 8, generator=g), dim=1)
    q = torch.randn(3, 8, generator=g)
    index = TokenIndex(bank, torch.arange(50), torch.zeros(50, dtype=torch.long), ["x"] * 50)
    for query, sims in zip(q, (F.normalize(q, dim=1) @ bank.T).numpy(), strict=True):
        scores, rows = query_index(index, query, k=7)
        expect = np.argsort(-sims)[:7]
        np.testing.assert_array_equal(rows.numpy(), expect)
        np.testing.assert_allclose(scores.numpy(), sims[expect], atol=1e-6)
    assert query_index(index, q[0], k=500)[1].shape == (50,)  # k clamped to the bank


def test_index_round_trip(model, tmp_path: Path) -> None:
    ds = EvalImages(_images(tmp_path / "data", 2), RES)
    index = build_token_index(model, ds, model_spec="m")
    index.save(tmp_path / "idx")
    back = TokenIndex.load(tmp_path / "idx")
    assert torch.equal(back.vectors, index.vectors) and torch.equal(back.token, index.token)
    assert back.paths == index.paths and back.meta == index.meta
    with pytest.raises(ValueError, match="token index"):
        TokenIndex.load(tmp_path / "nothing")


def test_cli_retrieve(tmp_path: Path, capsys) -> None:
    data = _images(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["retrieve", "--model", "stellar-tiny", "--query", str(data / "img2.png")]
    argv += ["--token", "3", "--k", "4", "--out", str(out), "--num-workers", "0"]
    assert main([*argv, "--data", str(data)]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert len(results) == 4
    assert Path(results[0]["path"]).name == "img2.png" and results[0]["token"] == 3
    assert abs(results[0]["similarity"] - 1) < 1e-4
    assert Image.open(out / "retrieval.png").width >= 4 * 160
    assert (out / "index" / "tokens.safetensors").is_file()
    assert "img2.png" in capsys.readouterr().out
    # Reuse the saved index without --data: the commands seed the random preset's init.
    assert main(argv) == 0
    reused = json.loads((out / "results.json").read_text())["results"]
    assert [(x["path"], x["token"]) for x in reused] == [(x["path"], x["token"]) for x in results]
    np.testing.assert_allclose(
        [x["similarity"] for x in reused], [x["similarity"] for x in results], atol=1e-4
    )
    with pytest.raises(ValueError, match="--token"):
        main([*argv[:5], "--token", "6", "--out", str(out)])
    with pytest.raises(ValueError, match="--data"):
        main([*argv[:-2], "--out", str(tmp_path / "empty")])


@pytest.mark.shared
def test_retrieve_samples(samples_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    photos = sorted((samples_dir / "images224").glob("*"))[:6]
    for photo in photos:
        (data / photo.name).symlink_to(photo)
    out = tmp_path / "out"
    argv = ["retrieve", "--model", "stellar-tiny", "--data", str(data), "--out", str(out)]
    argv += ["--query", str(data / photos[1].name), "--token", "0", "--num-workers", "0"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert len(results) == 8 and Path(results[0]["path"]).name == photos[1].name
    assert results[0]["token"] == 0 and abs(results[0]["similarity"] - 1) < 1e-4


def _retrieve(model: Path | str, out: Path, query: Path, *extra: str) -> int:
    argv = ["retrieve", "--model", str(model), "--query", str(query), "--token", "0"]
    return main([*argv, "--out", str(out), "--num-workers", "0", "--k", "3", *extra])


def test_index_records_model_identity(model, tmp_path: Path) -> None:
    from stellar.viz.token_index import weights_fingerprint

    ds = EvalImages(_images(tmp_path / "data", 2), RES)
    index = build_token_index(model, ds, model_spec="m", data="/some/folder")
    assert index.meta["weights"] == weights_fingerprint(model)
    assert index.meta["num_tokens"] == 6 and index.meta["dim"] == 96
    assert index.meta["patch_size"] == 8 and index.meta["data"] == "/some/folder"
    torch.manual_seed(12345)  # not the fixture's seed
    other = create_stellar("stellar-tiny")  # another random init, same architecture
    assert weights_fingerprint(other) != weights_fingerprint(model)
    copy = create_stellar("stellar-tiny")
    copy.load_state_dict(model.state_dict())
    assert weights_fingerprint(copy) == weights_fingerprint(model)


def test_stale_index_is_refused(tmp_path: Path) -> None:
    data = _images(tmp_path / "data", 3)
    query = data / "img1.png"
    torch.manual_seed(1)
    first = create_stellar("stellar-tiny").save_pretrained(tmp_path / "first")
    torch.manual_seed(2)
    second = create_stellar("stellar-tiny").save_pretrained(tmp_path / "second")
    wide = create_stellar("stellar-tiny", num_sparse_tokens=12).save_pretrained(tmp_path / "r12")
    out = tmp_path / "out"
    assert _retrieve(first, out, query, "--data", str(data)) == 0
    # Same model, same or no --data: reused.
    assert _retrieve(first, out, query) == 0
    assert _retrieve(first, out, query, "--data", str(data) + "/") == 0
    index_file = out / "index" / "tokens.safetensors"
    built = index_file.stat().st_mtime_ns
    with pytest.raises(ValueError, match="weights '[0-9a-f]+' \\(this run: ") as err:
        _retrieve(second, out, query)  # same width and r: only the fingerprint tells
    assert "new --out" in str(err.value) and "delete" in str(err.value)
    with pytest.raises(ValueError, match="num_tokens 6 \\(this run: 12\\)"):
        _retrieve(wide, out, query)
    other_data = _images(tmp_path / "other", 2)
    with pytest.raises(ValueError, match=f"data .*\\(this run: .*{other_data.name}") as err:
        _retrieve(first, out, query, "--data", str(other_data))
    assert "files differ" not in str(err.value)  # another folder, not a changed one
    with pytest.raises(ValueError, match="resolution 64 \\(this run: 128\\)"):
        _retrieve(first, out, query, "--resolution", "128")
    assert index_file.stat().st_mtime_ns == built  # never overwritten by a refused run


def test_an_index_of_other_files_is_refused_and_a_deleted_neighbour_is_listed_only(
    tmp_path: Path, caplog
) -> None:
    """The index records its folder's file list: files added since are not silently left out
    of the search; without --data the saved index is used as it is, its deleted files listed
    in results.json but not drawn, as are files that no longer decode."""
    data = _images(tmp_path / "data", 3)
    query = tmp_path / "query.png"
    Image.open(data / "img1.png").save(query)
    out = tmp_path / "out"
    assert _retrieve("stellar-tiny", out, query, "--data", str(data)) == 0
    _images(tmp_path / "data", 5)  # two more images
    with pytest.raises(ValueError, match="other settings \\(files differ\\)"):
        _retrieve("stellar-tiny", out, query, "--data", str(data))
    for i in range(5):
        (data / f"img{i}.png").unlink()
    assert _retrieve("stellar-tiny", out, query) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert len(results) == 3 and "cannot draw" in caplog.text
    (data / "img1.png").write_bytes(b"not a png")  # there again, but no longer an image
    assert _retrieve("stellar-tiny", out, query) == 0


def test_index_without_identity_is_not_reused(model, tmp_path: Path) -> None:
    data = _images(tmp_path / "data", 2)
    index = build_token_index(model, EvalImages(data, RES), model_spec="tiny")
    index.meta = {"model": "tiny", "resolution": RES, "num_tokens": 6, "dim": 96}  # older file
    index.save(tmp_path / "out" / "index")
    with pytest.raises(ValueError, match="patch_size None \\(this run: 8\\)"):
        _retrieve("stellar-tiny", tmp_path / "out", data / "img0.png")


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--query", "/nonexistent.jpg"], "nonexistent.jpg"),  # each error names the file
        (["--query", "TEXT"], "notes.jpg"),
        (["--k", "0"], "argument --k: expected an integer >= 1"),
        (["--token", "-1"], "argument --token: expected an integer >= 0"),
        (["--out", "FILE"], "is a file; expected a folder"),
        (["--token", "6"], r"--token in \[0, 6\)"),
        (["--resolution", "36"], "patch size 8"),
        (["--data", "/nonexistent/dir"], "/nonexistent/dir"),
    ],
)
def test_retrieve_checks_arguments_before_loading_or_indexing(
    tmp_path: Path, monkeypatch, capsys, extra, message
) -> None:
    import stellar.hub
    import stellar.viz.retrieve

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded or the data indexed before the checks")

    for module, name in [
        (stellar.hub, "load_model"),
        (stellar.hub, "load_stellar"),
        (stellar.viz.retrieve, "build_token_index"),
    ]:
        monkeypatch.setattr(module, name, no_work)
    data = _images(tmp_path / "data", 2)
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "file").write_text("a file, not a folder")
    subst = {"TEXT": str(tmp_path / "notes.jpg"), "FILE": str(tmp_path / "file")}
    extra = [subst.get(x, x) for x in extra]
    args = {"--query": str(data / "img0.png"), "--token": "0", "--data": str(data)}
    args["--out"] = str(tmp_path / "out")
    args.update(zip(extra[::2], extra[1::2], strict=True))
    argv = ["retrieve", "--model", "stellar-tiny"]
    for key, value in args.items():
        argv += [key, value]
    if message.startswith("argument "):  # a number: argparse's usage error
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
    else:
        with pytest.raises(ValueError, match=message):
            main(argv)
    assert not (tmp_path / "out" / "index").exists()


def test_retrieve_outputs_are_written_atomically(model, tmp_path: Path, monkeypatch) -> None:
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    data = _images(tmp_path / "data", 3)
    out = tmp_path / "out"
    query = sorted(data.glob("*.png"))[0]
    assert _retrieve(ckpt, out, query, "--data", str(data)) == 0

    def results():  # the lock file records its holder, who changes
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}

    before = results()

    def partial(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", partial)
    with pytest.raises(ValueError, match="could not write .*retrieval.png .*No space"):
        _retrieve(ckpt, out, query, "--data", str(data))
    assert results() == before


def test_faiss_and_torch_fallback_return_the_same_neighbours(monkeypatch) -> None:
    g = torch.Generator().manual_seed(11)
    index = TokenIndex(
        F.normalize(torch.randn(40, 16, generator=g), dim=1),
        torch.arange(40),
        torch.zeros(40, dtype=torch.long),
        ["x"] * 40,
    )
    q = torch.randn(4, 16, generator=g)
    pytest.importorskip("faiss", reason="faiss-cpu (the faiss / test extra) is not installed")
    with_faiss = [query_index(index, query, k=6) for query in q]
    assert index._faiss is not None  # the faiss index was built and kept
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # import faiss -> ImportError
    torch_only = TokenIndex(index.vectors, index.image, index.token, index.paths)
    fallback = [query_index(torch_only, query, k=6) for query in q]
    assert torch_only._faiss is None  # the torch matmul answered
    for (s1, r1), (s2, r2) in zip(with_faiss, fallback, strict=True):
        np.testing.assert_array_equal(r1.numpy(), r2.numpy())
        np.testing.assert_allclose(s1.numpy(), s2.numpy(), atol=1e-5)


def test_test_extra_installs_faiss() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(dep.startswith("faiss-cpu") for dep in extras["faiss"])
    assert any(dep.startswith("faiss-cpu") for dep in extras["test"])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "short paths", "bad meta"])
def test_a_damaged_index_is_one_error_naming_it(model, tmp_path: Path, damage: str) -> None:
    """Issue 22: a damaged index is named with the fix, not a traceback."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    ckpt = model.save_pretrained(tmp_path / "ckpt")
    data = _images(tmp_path / "data", 3)
    query = sorted(data.glob("*.png"))[0]
    assert _retrieve(ckpt, tmp_path / "a", query, "--data", str(data)) == 0
    path = tmp_path / "a" / "index" / "tokens.safetensors"
    if damage in ("truncated", "garbage"):
        path.write_bytes(path.read_bytes()[:-40] if damage == "truncated" else b"\x00" * 64)
    else:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        key, value = ("paths", "[]") if damage == "short paths" else ("meta", "{bad")
        save_file(load_file(str(path)), str(path), {**metadata, key: value})
    with pytest.raises(ValueError, match=f"token index {path} is damaged; delete it"):
        _retrieve(ckpt, tmp_path / "a", query)
