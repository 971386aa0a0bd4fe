"""Reading and atomically writing checkpoint files."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from stellar.checkpoint.official import to_official

if TYPE_CHECKING:
    from stellar.models.stellar import STELLAR

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CONFIG_METADATA_KEY = "stellar_config"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder and an atomic rename.

    A crash mid-write leaves the previous file intact; ``write`` receives the temp path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a ``.safetensors`` file or a torch pickle (``.bin/.pt/.pth``).

    Pickles are read with ``weights_only=True``; a nested ``model`` / ``state_dict`` entry is
    unwrapped (the layout of MAE and many training scripts).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            return tensors, dict(f.metadata() or {})
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means the same to a user
        raise ValueError(f"could not read {path} as safetensors or a torch pickle: {err}") from err
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj, {}


def save_state_dict(
    state: dict[str, Tensor], path: str | Path, metadata: dict | None = None
) -> Path:
    """Atomically write tensors as safetensors (contiguous, CPU copies)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {"format": "pt", **(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def save_pretrained(
    model: STELLAR, directory: str | Path, state: dict[str, Tensor] | None = None
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in the official transformers-4.x layout.

    The config is also stored in the safetensors metadata, so the file alone is self-describing.
    ``state`` replaces ``model.state_dict()`` (e.g. a full state gathered from FSDP shards).
    """
    directory = Path(directory)
    config = json.dumps(model.config.to_dict(), indent=2) + "\n"
    save_state_dict(
        to_official(model.state_dict() if state is None else state),
        directory / WEIGHTS_NAME,
        {CONFIG_METADATA_KEY: config},
    )
    atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(config))
    return directory
