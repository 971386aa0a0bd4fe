"""The running explorer page through ``gradio_client``, on the loopback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio_client", reason="the explorer needs the app extra (gradio)")

from gradio_client import Client, handle_file  # noqa: E402

from stellar.explore.core import encode_image, token_at  # noqa: E402
from stellar.viz.token_index import weights_fingerprint  # noqa: E402

# gradio's own queue warns about pandas options it uses; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")


@pytest.fixture(scope="module")
def client(served):
    return Client(served, verbose=False)


def _all(explorer) -> list[int]:
    return list(range(explorer.model.num_tokens))


def test_open_point_retrieve_drop(client, explorer, tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.open(explorer.picks[5]).resize((150, 100)).save(photo)
    out = client.predict(handle_file(str(photo)), api_name="/open")
    concepts, argmax, recon, maps, pca_d, pca_l, legend, selected, shown, gallery, status = out
    assert "Opened" in status and selected is None and gallery == []
    for picture in (concepts, argmax, recon, maps, pca_d, pca_l):
        assert Image.open(picture).size[0] > 0
    assert legend.count("peak") == explorer.model.num_tokens

    enc = encode_image(explorer.model, Image.open(photo))
    x, y = 300.0, 40.0
    out = client.predict(x, y, _all(explorer), api_name="/point")
    token = token_at(enc.spatial, enc.grid, (x, y), 384)
    assert out[-2] == token and f"t{token}" in out[-1]

    gallery, info, status = client.predict(4, api_name="/retrieve")
    assert len(gallery) == 4 and all(Image.open(g["image"]).size == (160, 160) for g in gallery)
    assert "sim" in gallery[0]["caption"]
    assert weights_fingerprint(explorer.model) in info and "Retrieved 4" in status

    edited, delta, text, status = client.predict(api_name="/drop")
    n = enc.spatial.shape[0]
    had_weight = int((enc.spatial[:, token] > 0).sum())
    assert f"{had_weight} of {n} patches" in text and status == "Edit applied."
    assert not torch.equal(_pixels(edited), _pixels(recon))
    assert client.predict(api_name="/reset")[-1] == "Edits undone."


def _pixels(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())


def test_bad_inputs_give_a_message(client, explorer, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    status = client.predict(handle_file(str(text)), api_name="/open")[-1]
    assert status.startswith("**Error:**") and "expected an image file" in status
    assert "Traceback" not in status


def test_edits_without_decoder_say_why(tmp_path, serve_explorer):
    from stellar.explore.explorer import Explorer
    from stellar.hub import create_stellar

    create_stellar("stellar-tiny").save_pretrained(tmp_path / "encoder-only")
    explorer = Explorer.load(str(tmp_path / "encoder-only"), cache_dir=tmp_path / "cache")
    assert explorer.why_not is not None
    client = Client(serve_explorer(explorer), verbose=False)
    status = client.predict(api_name="/drop")[-1]
    assert "open an image first" in status
    pick = handle_file(str(explorer.picks[0]))
    out = client.predict(pick, api_name="/open")
    assert out[2] is None and "No reconstruction" in out[-1]
    client.predict(10.0, 10.0, _all(explorer), api_name="/point")
    edited, delta, text, _ = client.predict(api_name="/drop")
    assert edited is None and delta is not None
    assert "cannot be drawn" in text and "no reconstruction decoder" in text
