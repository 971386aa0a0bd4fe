"""Reading and atomically writing checkpoint files."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_PROTO = b"\x80"  # legacy torch.save / plain pickle (protocol >= 2)


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


def _looks_like(head: bytes) -> str:
    """A few words on what a file that is no checkpoint seems to be, for the error."""
    if not head:
        return "the file is empty"
    if head.startswith(b"\xff\xd8\xff"):
        return "it looks like a JPEG image"
    if head.startswith(b"\x89PNG"):
        return "it looks like a PNG image"
    if head.lstrip()[:1] in (b"{", b"["):
        return "it looks like JSON text (a config.json?)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"unrecognised content starting with {head[:8]!r}"
    return "it looks like a text file"


def _is_safetensors(head: bytes, size: int) -> bool:
    # An 8-byte little-endian header length, then the JSON header itself.
    if len(head) < 10:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= size - 8 and head[8:9] == b"{"


def _torch_reason(err: Exception) -> str:
    """The cause of a torch.load failure, without torch's advice to drop weights_only."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:  # the useful part sits between torch's advice and its doc link
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    reason = lines[0].split(". Please use", 1)[0] if lines else type(err).__name__
    if reason.startswith("Unsupported global"):  # e.g. a whole pickled nn.Module
        reason += " (the pickle holds Python objects, not only tensors)"
    return reason


def load_weights_file(path: str | Path) -> tuple[Any, dict[str, str]]:
    """What a ``.safetensors`` file or a torch pickle holds, and its metadata.

    The format is told from the content, not the suffix. Pickles are read with
    ``weights_only=True`` and returned as loaded (the caller checks the structure).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is neither format, or is damaged; the message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    with open(path, "rb") as f:
        head = f.read(16)
    what = f"{path} is not a .safetensors file or a torch state-dict pickle (.bin/.pt/.pth)"
    if _is_safetensors(head, path.stat().st_size):
        try:
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
                return tensors, dict(f.metadata() or {})
        except Exception as err:  # a truncated or corrupt file: same meaning to a user
            raise ValueError(f"{what}: unreadable safetensors data ({err})") from None
    if not head.startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
        raise ValueError(f"{what}: {_looks_like(head)}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}
    except Exception as err:  # any unpickling failure means the same to a user
        raise ValueError(f"{what}: {_torch_reason(err)}") from None


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a ``.safetensors`` file or a torch pickle (``.bin/.pt/.pth``).

    Pickles are read with ``weights_only=True``; a nested ``model`` / ``state_dict`` entry is
    unwrapped (the layout of MAE and many training scripts).
    """
    obj, metadata = load_weights_file(path)
    return _state_dict_in(obj, path), metadata


def read_header(path: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata of a weights file, without reading the tensors if possible.

    A safetensors header is read alone; a zip-format pickle is memory-mapped; only a legacy
    pickle is read whole.
    """
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(16)
        if _is_safetensors(head, path.stat().st_size):
            try:
                with safe_open(str(path), framework="pt") as f:
                    shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
                    return shapes, dict(f.metadata() or {})
            except Exception:  # noqa: BLE001 - read_state_dict below names the problem
                pass
        elif head.startswith(_ZIP_MAGIC):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # noqa: BLE001 - read_state_dict below names the problem
                pass
            else:
                return {k: tuple(v.shape) for k, v in _state_dict_in(obj, path).items()}, {}
    state, metadata = read_state_dict(path)
    return {k: tuple(v.shape) for k, v in state.items()}, metadata


def _state_dict_in(obj: Any, path: str | Path) -> dict[str, Tensor]:
    """The tensors of a loaded pickle, unwrapping a nested ``model`` / ``state_dict`` entry."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


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
