"""``stellar explore``'s command line: safe defaults, and Gradio imported only when it runs."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

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


def test_a_collection_must_be_a_folder(tmp_path):
    with pytest.raises(UsageError, match="expected --collection an image folder"):
        Explorer.load("stellar-tiny", collection=tmp_path / "missing", cache_dir=tmp_path)
