"""A Hugging Face hub on 127.0.0.1 and a private cache, so no test here touches the network."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from pathlib import Path

import pytest

COMMIT = "c0ffee" + "0" * 34


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers ``/{org}/{name}/resolve/{revision}/{file}`` as the hub does (HEAD and GET)."""

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        m = re.match(r"^/([^/]+/[^/]+)/resolve/[^/]+/(.+)$", self.path)
        data = self.server.files.get((m[1], m[2])) if m else None
        if m:
            self.server.requests.append((self.command, m[1], m[2]))
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


class FakeHub:
    """The files the hub serves, the requests it got, and offline mode."""

    def __init__(self, server: http.server.ThreadingHTTPServer, cache: Path, monkeypatch) -> None:
        self.server, self.cache, self._monkeypatch = server, cache, monkeypatch

    def put(self, repo_id: str, filename: str, content: bytes | str | Path) -> None:
        if isinstance(content, Path):
            content = content.read_bytes()
        if isinstance(content, str):
            content = content.encode()
        self.server.files[(repo_id, filename)] = content

    @property
    def downloads(self) -> list[tuple[str, str]]:
        return [(repo, name) for method, repo, name in self.server.requests if method == "GET"]

    def offline(self) -> None:
        from huggingface_hub import constants

        self._monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hf_hub(tmp_path, monkeypatch):
    """huggingface_hub pointed at a local server and a cache in ``tmp_path / "hf"``.

    huggingface_hub reads its environment when first imported, so its constants are set too.
    """
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, server.requests = {}, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    yield FakeHub(server, cache, monkeypatch)
    server.shutdown()
    server.server_close()
