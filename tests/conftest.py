"""Shared test helpers: where ../shared lives, and a skip when it is absent."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STELLAR_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "fixtures" / "reference"
SAMPLES = SHARED / "data" / "imagenet-samples"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the shared fixtures beside the repo); absent on this machine")
    return path


@pytest.fixture
def reference_dir() -> Path:
    """``../shared/fixtures/reference``; skips the test when it is absent."""
    return _require(REFERENCE)


@pytest.fixture
def tiny_io(reference_dir: Path) -> dict[str, torch.Tensor]:
    """Golden tensors of the official model code for the stellar-tiny config."""
    from safetensors.torch import load_file

    return load_file(str(_require(reference_dir / "stellar-tiny" / "io.safetensors")))


@pytest.fixture
def samples_dir() -> Path:
    """``../shared/data/imagenet-samples``; skips the test when it is absent."""
    return _require(SAMPLES)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def held_by_another_process():
    """``with held_by_another_process(folder, job):`` ``folder`` is held by a second process
    (``stellar.outputs.output_folder``) for the block."""
    return _held_by_another_process


@contextlib.contextmanager
def _held_by_another_process(folder: Path, job: str):
    code = (
        "import sys\nfrom stellar.outputs import output_folder\n"
        f"with output_folder({str(folder)!r}, {job!r}):\n"
        "    print('holding', flush=True)\n    sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield
    finally:
        holder.communicate("")
