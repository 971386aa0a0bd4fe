"""examples/reconstruction.ipynb runs top to bottom; only its parameters cell is swapped for a
small checkpoint (the released-weights cells are the same code)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from stellar import create_stellar

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs the test extras")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs the test extras")

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "reconstruction.ipynb"


def test_reconstruction_notebook_runs_on_a_small_checkpoint(tmp_path):
    create_stellar("stellar-tiny", purpose="reconstruct").save_pretrained(tmp_path / "tiny")
    pixels = torch.randint(0, 256, (120, 90, 3), dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "the notebook has one parameters cell"
    model, photo = str(tmp_path / "tiny"), str(tmp_path / "photo.png")
    params[0].source = f"MODEL = {model!r}\nVQ_MODEL = None\nPHOTO = {photo!r}"
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # concept maps, argmax map, the reconstruction figure
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "6 concept tokens of width 96" in text and "mean absolute change" in text
