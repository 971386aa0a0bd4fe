"""The explorer's fixtures: a tiny model with a decoder, its explorer, and the page served on
the loopback (shared by the client and the browser tests, one server per session)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved random stellar-tiny with its pixel decoder; ``$STELLAR_EXPLORE_MODEL`` (any
    ``--model`` value, e.g. a demo run folder) replaces it, to draw the README's screenshot."""
    if os.environ.get("STELLAR_EXPLORE_MODEL"):
        return Path(os.environ["STELLAR_EXPLORE_MODEL"])
    import torch

    from stellar.hub import create_stellar

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny"
    create_stellar("stellar-tiny", purpose="reconstruct").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def explorer(tiny_dir, tmp_path_factory):
    from stellar.explore.explorer import Explorer

    return Explorer.load(str(tiny_dir), cache_dir=tmp_path_factory.mktemp("explore-cache"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(explorer, tmp_path_factory) -> tuple[str, object]:
    """Launch the page of ``explorer`` on 127.0.0.1 and a free port: ``(url, page)``."""
    pytest.importorskip("gradio", reason="the explorer needs the app extra (gradio)")
    os.environ.setdefault("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
    from stellar.explore.app import build_app

    page = build_app(explorer)
    port = free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/", page


@pytest.fixture(scope="session")
def served(explorer, tmp_path_factory):
    """The URL of the explorer page of the tiny model."""
    url, page = serve(explorer, tmp_path_factory)
    yield url
    page.close()


@pytest.fixture
def serve_explorer(tmp_path_factory):
    """``serve`` for a test's own explorer; its pages are closed after the test."""
    pages = []

    def start(explorer) -> str:
        url, page = serve(explorer, tmp_path_factory)
        pages.append(page)
        return url

    yield start
    for page in pages:
        page.close()
