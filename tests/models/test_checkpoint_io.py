"""Checkpoint files: permissions of atomic writes, clear errors for files of the wrong kind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from stellar import create_stellar, load_stellar
from stellar.checkpoint.weights import read_header, read_state_dict
from stellar.models.vqgan import load_vqgan
from stellar.outputs import atomic_write


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    try:
        yield lambda mask: os.umask(mask)
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_writes_get_the_mode_of_a_plain_file(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = atomic_write(tmp_path / "atomic.txt", lambda tmp: tmp.write_text("x"))
    assert _mode(written) == _mode(plain) == 0o666 & ~mask
    create_stellar("stellar-tiny").save_pretrained(tmp_path / "ckpt")
    for name in ("model.safetensors", "config.json"):
        assert _mode(tmp_path / "ckpt" / name) == 0o666 & ~mask, name
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temp file left behind


def _files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "text.safetensors": b"hello\n",
        "text.bin": b"hello\n",
        "config.json": b'{"architecture": "stellar"}\n',
        "photo.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64),
        "empty.pt": b"",
        "truncated.safetensors": (200).to_bytes(8, "little") + b'{"a": {"dtype"',
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    return {name: tmp_path / name for name in files}


@pytest.mark.parametrize(
    "name",
    [
        "text.safetensors",
        "text.bin",
        "config.json",
        "photo.jpg",
        "empty.pt",
        "truncated.safetensors",
    ],
)
def test_wrong_file_types_name_the_path_and_the_formats(tmp_path, name):
    path = _files(tmp_path)[name]
    readers = [read_state_dict, read_header, load_stellar, load_vqgan]
    for read in readers:
        with pytest.raises(ValueError) as err:
            read(path)
        message = str(err.value)
        assert message.startswith(f"{path} is not a .safetensors file or a torch state-dict")
        assert "\n" not in message, (read.__name__, message)  # one line
        assert "weights_only" not in message  # torch's advice to unpickle untrusted code


def test_pickles_of_both_torch_formats_still_load(tmp_path):
    state = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    torch.save(state, tmp_path / "zip.pt")
    torch.save({"model": state}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    save_file(state, tmp_path / "renamed.bin")  # safetensors content, other suffix
    for name in ("zip.pt", "legacy.bin", "renamed.bin"):
        loaded, _ = read_state_dict(tmp_path / name)
        assert loaded.keys() == state.keys() and torch.equal(loaded["b"], state["b"]), name
        assert read_header(tmp_path / name)[0] == {"a": (4,), "b": (2, 2)}, name


def test_a_pickle_of_something_else_is_refused_without_weights_only_advice(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole module: needs weights_only=False
    with pytest.raises(ValueError, match="is not a .safetensors file") as err:
        read_state_dict(path)
    assert "weights_only" not in str(err.value)


def test_last_is_made_durable_before_older_checkpoints_are_pruned(tmp_path, monkeypatch):
    from stellar import create_stellar
    from stellar.train import checkpoint as ckpt

    events = []
    real_prune = ckpt._prune
    monkeypatch.setattr(ckpt, "fsync_dir", lambda folder: events.append(("fsync", folder)))
    monkeypatch.setattr(
        ckpt, "_prune", lambda root, keep: (events.append(("prune", root)), real_prune(root, keep))
    )
    model = create_stellar("stellar-tiny")
    (tmp_path / "step-00000000.bak").mkdir()  # a user's copy is not the run's to prune
    for step in (1, 2):
        ckpt.save_checkpoint(
            tmp_path, step, model, {"step": step, ckpt.CHECKPOINT_ID: f"run-{step}"}, keep=1
        )
    assert events[-2:] == [("fsync", tmp_path), ("prune", tmp_path)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last",
        "step-00000000.bak",
        "step-00000002",
    ]


def test_an_interrupted_download_says_to_fetch_it_again(tmp_path):
    create_stellar("stellar-tiny").save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    with open(path, "r+b") as f:  # the header whole, half the tensors' bytes
        f.truncate(path.stat().st_size // 2)
    for read in (read_state_dict, load_stellar):
        with pytest.raises(ValueError) as err:
            read(path)
        message = str(err.value)
        assert message.startswith(f"{path} is a damaged or incomplete .safetensors file")
        assert message.endswith("fetch or save it again") and "\n" not in message
