"""Atomically writing checkpoint files (reading them: :mod:`stellar.checkpoint.weights`)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor, nn

from stellar.checkpoint.card import CARD_NAME, model_card
from stellar.checkpoint.official import to_official

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CONFIG_METADATA_KEY = "stellar_config"


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (threads keep it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # the only portable read; restrictive while it is swapped
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder and an atomic rename.

    A crash mid-write leaves the previous file intact; ``write`` receives the temp path. The
    file ends up with the mode a plain ``open(path, "w")`` would give it (0o666 & ~umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            # mkstemp creates 0o600 and os.replace keeps the mode, so other users could not
            # read the result; set it after ``write``, which may have recreated the file.
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def fsync_dir(folder: str | Path) -> None:
    """Make the renames in ``folder`` durable (a power cut could otherwise undo them)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory: renames there are not fsync-able
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; nothing more to do
        pass
    finally:
        os.close(fd)


def save_state_dict(
    state: dict[str, Tensor], path: str | Path, metadata: dict | None = None
) -> Path:
    """Atomically write tensors as safetensors (contiguous, CPU copies)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    meta = {"format": "pt", **(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def save_pretrained(
    model: nn.Module,
    directory: str | Path,
    state: dict[str, Tensor] | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write a STELLAR ``model`` as ``config.json``, ``model.safetensors`` and a model card.

    The weights use the official layout and carry the config in their metadata (the file alone
    is self-describing); ``README.md`` is a Hugging Face model card, so the folder can be
    uploaded as it is. ``state`` replaces ``model.state_dict()`` (e.g. gathered FSDP shards).
    """
    directory = Path(directory)
    config = json.dumps(model.config.to_dict(), indent=2) + "\n"
    save_state_dict(
        to_official(model.state_dict() if state is None else state),
        directory / WEIGHTS_NAME,
        {CONFIG_METADATA_KEY: config},
    )
    atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(config))
    card = model_card(model.config.to_dict(), training, metrics)
    atomic_write(directory / CARD_NAME, lambda tmp: tmp.write_text(card))
    return directory
