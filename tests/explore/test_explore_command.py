"""``stellar explore``'s command line: safe defaults, and Gradio imported only when it runs."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from PIL import Image

from stellar.cli import COMMANDS
from stellar.errors import UsageError
from stellar.explore import command
from stellar.explore.explorer import Explorer


def test_serves_on_the_loopback_without_a_share_link_by_default():
    assert COMMANDS["explore"][0] == "stellar.explore.command"
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--model", "stellar-tiny"])
    assert args.host == "127.0.0.1" and args.share is False and args.collection is None


def test_gradio_is_imported_only_by_the_page():
    code = (
        "import sys, stellar, stellar.explore.command, stellar.explore.explorer; "
        "assert 'gradio' not in sys.modules, 'gradio imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_collection_must_be_a_folder_of_images(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for collection in (tmp_path / "missing", tmp_path / "empty"):  # not at the first search
        with pytest.raises(UsageError, match="expected --collection an image folder"):
            Explorer.load("stellar-tiny", collection=collection, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before anything was written


def test_a_cache_inside_the_collection_is_refused(tmp_path):
    """The example scenes written there would be searched as the user's photos."""
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.png")
    with pytest.raises(UsageError, match="inside the input folder"):
        Explorer.load("stellar-tiny", tmp_path / "photos", cache_dir=tmp_path / "photos" / "c")
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["a.png"]


def test_a_port_in_use_is_one_error_naming_the_flag(tmp_path):
    import socket

    pytest.importorskip("gradio")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--model", "stellar-tiny", "--port", str(port), "--cache-dir", str(tmp_path)]
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        with pytest.raises(UsageError, match=f"127.0.0.1:{port}: pass another --port"):
            command.run(parser.parse_args(argv))
