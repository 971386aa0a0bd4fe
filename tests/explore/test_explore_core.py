"""The explorer's logic without the page: open, encode, point, edit, retrieve."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import stellar.images
from stellar.errors import UsageError
from stellar.explore.core import (
    drop_token,
    encode_image,
    render_views,
    swap_token,
    token_at,
)
from stellar.explore.retrieval import Collection
from stellar.images import open_image
from stellar.viz.token_index import INDEX_FILE, weights_fingerprint


def _sharp(spatial: torch.Tensor, token: int) -> torch.Tensor:
    """``spatial`` with token's weight removed from every other patch (exact zeros there)."""
    out = spatial.clone()
    out[1::2, token] = 0
    return out / out.sum(-1, keepdim=True)


def test_open_image_refuses_non_images_and_huge_ones(tmp_path, monkeypatch):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(UsageError, match="expected an image file"):
        open_image(text)
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "ok.png")
    assert open_image(tmp_path / "ok.png").size == (40, 30)
    monkeypatch.setattr(stellar.images, "MAX_PIXELS", 40 * 30 - 1)
    with pytest.raises(UsageError, match="40x30 pixels"):
        open_image(tmp_path / "ok.png")


def test_upload_gives_maps_and_click_gives_the_owning_token(explorer):
    model = explorer.model
    enc = encode_image(model, Image.new("RGB", (90, 70), (200, 40, 40)), "red")
    h, w = enc.grid
    r = model.num_tokens
    assert enc.image.shape == (3, model.image_size, model.image_size)
    assert enc.spatial.shape == (h * w, r) and enc.sparse.shape == (r, model.embed_dim)
    torch.testing.assert_close(enc.spatial.sum(-1), torch.ones(h * w))
    views = render_views(enc, selected=2, cell=128)
    assert views["concepts"].size == views["argmax"].size == (128, 128)
    assert views["legend"].count("t") >= r and "font-weight:bold" in views["legend"]
    # a click lands on the patch under it; the patch's argmax token is selected
    spatial = torch.full((h * w, r), 0.1 / (r - 1))
    patch = (h // 2) * w + (w - 1)  # middle row, last column
    spatial[patch] = 0.0
    spatial[patch, 3] = 1.0
    x, y = 128 - 1, (h // 2 + 0.5) * 128 / h
    assert token_at(spatial, (h, w), (x, y), 128) == 3


def test_drop_changes_z_exactly_where_the_token_had_weight(explorer):
    enc = encode_image(explorer.model, explorer.picks[0], "scene")
    k = 1
    spatial = _sharp(enc.spatial, k)
    dropped = drop_token(spatial, k)
    assert torch.all(dropped[:, k] == 0)
    torch.testing.assert_close(dropped.sum(-1), torch.ones(len(dropped)))
    before, after = spatial @ enc.sparse, dropped @ enc.sparse
    assert torch.equal((before != after).any(-1), spatial[:, k] > 0)
    rec_before = explorer.reconstruct(enc.sparse, spatial, enc.grid, 64)
    rec_after = explorer.reconstruct(enc.sparse, dropped, enc.grid, 64)
    assert rec_after.size == rec_before.size == (64, 64)
    assert rec_after.tobytes() != rec_before.tobytes()


def test_drop_of_a_patchs_only_token_leaves_an_empty_row():
    spatial = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    dropped = drop_token(spatial, 0)
    assert torch.equal(dropped[0], torch.zeros(3))  # no concept left for that patch
    assert torch.equal(dropped[1], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(dropped[2], spatial[2])  # bit for bit


def test_swap_replaces_one_concept_and_keeps_the_maps(explorer):
    enc = encode_image(explorer.model, explorer.picks[0], "a")
    other = encode_image(explorer.model, explorer.picks[1], "b")
    k, j = 2, 4
    swapped = swap_token(enc.sparse, k, other.sparse[j])
    assert torch.equal(swapped[k], other.sparse[j])
    assert torch.equal(
        torch.cat([swapped[:k], swapped[k + 1 :]]), torch.cat([enc.sparse[:k], enc.sparse[k + 1 :]])
    )
    spatial = _sharp(enc.spatial, k)
    changed = (spatial @ enc.sparse != spatial @ swapped).any(-1)
    assert torch.equal(changed, spatial[:, k] > 0)


def test_retrieval_uses_the_fingerprinted_cached_index(explorer, tmp_path, caplog):
    model = explorer.model
    folder = explorer.picks[0].parent
    collection = Collection(model, folder, "tiny", tmp_path)
    enc = collection.encoded(str(explorer.picks[3]))
    found = collection.neighbours(enc.sparse[2], k=5)
    assert len(found) == 5
    assert found[0].encoded.name == explorer.picks[3].name and found[0].token == 2
    assert found[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert [n.similarity for n in found] == sorted((n.similarity for n in found), reverse=True)
    index = collection.index()
    assert index.meta["weights"] == weights_fingerprint(model)
    assert index.meta["data"] == str(folder.resolve())
    saved = (collection.index_dir / INDEX_FILE).stat().st_mtime_ns
    # a second session reuses the saved index; another collection gets its own folder
    again = Collection(model, folder, "tiny", tmp_path)
    assert again.index_dir == collection.index_dir
    assert len(again.index()) == len(index)
    assert (collection.index_dir / INDEX_FILE).stat().st_mtime_ns == saved
    assert Collection(model, tmp_path, "tiny", tmp_path).index_dir != collection.index_dir


def test_an_index_of_other_weights_is_rebuilt(explorer, tmp_path):
    collection = Collection(explorer.model, explorer.picks[0].parent, "tiny", tmp_path)
    index = collection.index()
    index.meta["weights"] = "0" * 16
    index.save(collection.index_dir)
    rebuilt = Collection(explorer.model, explorer.picks[0].parent, "tiny", tmp_path).index()
    assert rebuilt.meta["weights"] == weights_fingerprint(explorer.model)
    rebuilt.meta["files"] = "0" * 16  # as if the folder held other files when it was built
    rebuilt.save(collection.index_dir)
    again = Collection(explorer.model, explorer.picks[0].parent, "tiny", tmp_path).index()
    assert again.meta["files"] != "0" * 16
