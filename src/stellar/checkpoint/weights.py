"""The one way weights enter a module: fetch a released file, read any weights file, load strictly.

Every loader (STELLAR checkpoints, the MaskGIT-VQGAN tokenizer, MAE initialisation, LPIPS, the
FID Inception) reads with :func:`read_state_dict` and loads with :func:`load_strict`; released
files come through :func:`hub_file`, so ``huggingface_hub`` owns the cache, offline mode and
downloads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from stellar.errors import UsageError

_LISTED = 12  # keys shown per kind in an error


class WeightsNotFoundError(UsageError, FileNotFoundError):
    """A weights file that is not there: a FileNotFoundError the command line prints as one line."""


def hub_file(repo_id: str, filename: str, fetch: Sequence[str] = ()) -> Path:
    """``filename`` of the Hugging Face repository ``repo_id``, from the hub cache or downloaded.

    ``huggingface_hub`` reads ``HF_HOME`` / ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` (when it is
    first imported); ``fetch`` names the other files the error's ``hf download`` command lists.

    Raises:
        FileNotFoundError: the file is neither cached nor downloadable (a
            :class:`WeightsNotFoundError` naming the repository, the file and the command).
    """
    # imported on use: `import stellar` stays light
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    try:
        return Path(hf_hub_download(repo_id, filename))
    except (EntryNotFoundError, HFValidationError, OSError) as err:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else str(err).split("\n")[0]
        command = " ".join(["hf download", repo_id, filename, *fetch])
        raise WeightsNotFoundError(
            f"{filename} of the Hugging Face repository {repo_id} is not in the local cache and "
            f"was not downloaded ({type(err).__name__}: {why}). Fetch it with `{command}` (it "
            "then loads offline too), or pass the path of a local copy"
        ) from None


def is_repo_id(spec: str | Path) -> bool:
    """Whether ``spec`` reads as a Hugging Face repository id (``org/name``) and not as a local
    path: neither it nor its parent folder exists (``runs/typo`` under ``runs/`` is a path)."""
    path = Path(spec).expanduser()
    is_id = re.fullmatch(r"[\w.-]+/[\w.-]+", str(spec)) is not None
    return is_id and not path.exists() and not path.parent.is_dir()


def read_json(path: Path) -> Any:
    """A JSON file (a config beside the weights), or a UsageError naming it."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON: {err}") from None


def _is_safetensors(head: bytes, size: int) -> bool:
    # An 8-byte little-endian header length, then the JSON header itself.
    length = int.from_bytes(head[:8], "little")
    return len(head) >= 10 and 2 <= length <= size - 8 and head[8:9] == b"{"


def _torch_reason(err: Exception) -> str:
    """The cause of a torch.load failure, without torch's advice to drop weights_only."""
    text = str(err)
    if "WeightsUnpickler error:" in text:  # the cause sits between the advice and a doc link
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    reason = lines[0].split(". Please use", 1)[0] if lines else type(err).__name__
    if reason.startswith("Unsupported global"):  # e.g. a whole pickled nn.Module
        reason += " (the pickle holds Python objects, not only tensors)"
    return reason


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def read_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a ``.safetensors`` file or a torch pickle (``.bin/.pt/.pth``).

    The format is told from the content, not the suffix; pickles are read with
    ``weights_only=True`` (no code in them runs) and a nested ``model`` / ``state_dict`` entry
    is unwrapped (MAE's layout).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: neither format, damaged, or not a ``str -> Tensor`` mapping; names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"no checkpoint file at {path}")
    head = _head(path)
    what = f"{path} is not a .safetensors file or a torch state-dict pickle (.bin/.pt/.pth)"
    if _is_safetensors(head, path.stat().st_size):
        try:
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
                return tensors, dict(f.metadata() or {})
        except Exception as err:  # a truncated or corrupt file (an interrupted download)
            raise UsageError(
                f"{path} is a damaged or incomplete .safetensors file ({err}): fetch or save "
                "it again"
            ) from None
    obj = read_pickle(path, what)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise UsageError(f"{path} does not hold a state dict of tensors (str -> Tensor)")
    return dict(obj), {}


def read_pickle(path: str | Path, what: str | None = None) -> Any:
    """A torch pickle read safely: ``weights_only=True`` (no code in it runs); both callers
    (:func:`read_state_dict`, the trainer's resume) have checked that ``path`` is a file.

    Raises:
        ValueError: not a torch pickle, damaged, or holding Python objects; names the file and
            never suggests ``weights_only=False``.
    """
    path = Path(path)
    what = what or f"{path} is not a readable torch pickle (.pt)"
    try:  # a file object: torch would pick its reader by a ".safetensors" suffix
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means the same to a user
        # torch's reason helps only for a file that is a torch pickle (zip or plain pickle)
        pickled = _head(path).startswith((b"PK\x03\x04", b"\x80"))
        raise UsageError(f"{what}: {_torch_reason(err)}" if pickled else what) from None


def read_header(path: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata; a safetensors file's header alone is read."""
    path = Path(path)
    if path.is_file() and _is_safetensors(_head(path), path.stat().st_size):
        try:
            with safe_open(str(path), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
                return shapes, dict(f.metadata() or {})
        except Exception:  # noqa: BLE001 - read_state_dict below names the problem
            pass
    state, metadata = read_state_dict(path)
    return {k: tuple(v.shape) for k, v in state.items()}, metadata


def listing(keys: Iterable[str]) -> str:
    """``a, b, c (+N more)``: keys for an error message, the first :data:`_LISTED` of them."""
    keys = list(keys)
    shown = ", ".join(keys[:_LISTED])
    return shown + (f" (+{len(keys) - _LISTED} more)" if len(keys) > _LISTED else "")


def _matches(key: str, names: tuple[str, ...]) -> bool:
    """``key`` is one of ``names`` or lies under one ending in ``.``."""
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in names)


def check_state(
    expected: Mapping[str, tuple[int, ...]],
    state: Mapping[str, Tensor],
    *,
    source: str,
    target: str,
    unused: Iterable[str] = (),
    may_be_missing: Iterable[str] = (),
) -> dict[str, Tensor]:
    """The tensors of ``state`` (read from ``source``) that ``expected`` (``key -> shape`` of
    ``target``) takes, or a ValueError unless they fit key for key, shape for shape, and hold
    no NaN or infinity (a diverged run): keys (or prefixes ending in ``.``) on ``unused`` are
    skipped, those on ``may_be_missing`` keep their initial value when absent.
    """
    unused, may_be_missing = tuple(unused), tuple(may_be_missing)
    unexpected = sorted(k for k in state if k not in expected and not _matches(k, unused))
    missing = sorted(k for k in expected if k not in state and not _matches(k, may_be_missing))
    wrong = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(shape)})"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != tuple(shape)
    ]
    problems = [
        f"{kind}: {listing(keys)}"
        for kind, keys in (("missing keys", missing), ("unexpected keys", unexpected))
        if keys
    ] + ([f"wrong shapes: {listing(wrong)}"] if wrong else [])
    if problems:
        raise UsageError(f"{source} does not fit {target}: " + "; ".join(problems))
    used = {k: v for k, v in state.items() if k in expected}
    bad = sorted(k for k, v in used.items() if v.is_floating_point() and not _finite(v))
    if bad:
        raise UsageError(
            f"{source} holds NaN or infinite values (a diverged run?) in {len(bad)} tensors: "
            f"{listing(bad)}"
        )
    return used


def _finite(tensor: Tensor) -> bool:
    """NaN propagates through min and max, and an infinity is one of them: two reductions
    instead of a boolean copy of the tensor (10x faster on a large checkpoint)."""
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return True
    return all(bool(torch.isfinite(v)) for v in torch.aminmax(tensor.detach()))


def load_strict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str,
    target: str | None = None,
    unused: Iterable[str] = (),
    may_be_missing: Iterable[str] = (),
    assign: bool = False,
) -> None:
    """Load ``state`` into ``module``: every tensor used or known-unused, every shape right.

    Everything is checked (:func:`check_state`) before anything is copied, so a refused file
    leaves ``module`` untouched; ``assign=True`` adopts the tensors (for a module built on the
    meta device).
    """
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    used = check_state(
        expected,
        state,
        source=source,
        target=target or f"the {type(module).__name__} layout",
        unused=unused,
        may_be_missing=may_be_missing,
    )
    # only keys on may_be_missing can be absent here: they keep their values
    module.load_state_dict(used, strict=len(used) == len(expected), assign=assign)
