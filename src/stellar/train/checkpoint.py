"""Training checkpoints: weights in the official layout plus optimizer/step/RNG state.

Each save writes a fresh ``step-XXXXXXXX/`` folder (every file atomically), then repoints the
``last`` symlink with an atomic rename; a crash at any moment leaves the previous ``last``
intact. ``checkpoints/last`` is itself a model directory that ``load_stellar`` reads.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from stellar.checkpoint.io import WEIGHTS_NAME, atomic_write, fsync_dir, save_pretrained
from stellar.errors import UsageError
from stellar.models.stellar import STELLAR

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.pt"
LAST = "last"


def save_checkpoint(
    root: Path,
    step: int,
    model: STELLAR,
    state: dict[str, Any],
    keep: int = 2,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``root/step-XXXXXXXX`` (model + trainer state) and point ``root/last`` at it.

    ``weights`` replaces ``model.state_dict()`` (a full state gathered from FSDP shards).
    """
    folder = root / f"step-{step:08d}"
    try:
        save_pretrained(model, folder, weights)
        atomic_write(folder / STATE_NAME, lambda tmp: torch.save(state, tmp))
    except OSError as err:
        # a full disk or a lost mount: `last` still points at the previous checkpoint
        previous = latest_checkpoint(root)
        intact = f"the previous checkpoint {previous} is intact" if previous else "no earlier one"
        raise OSError(
            err.errno, f"could not write checkpoint {folder} ({err.strerror or err}); {intact}"
        ) from err
    link_tmp = root / f".{LAST}.tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(folder.name, link_tmp)
    os.replace(link_tmp, root / LAST)
    fsync_dir(root)  # `last` must durably point at the new folder before older ones go
    _prune(root, keep)
    return folder


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``root/last`` points at, if a complete one exists."""
    last = root / LAST
    if last.exists() and (last / STATE_NAME).is_file():
        return last.resolve()
    return None


def resume_checkpoint(root: Path) -> Path:
    """The folder ``root/last`` points at; a UsageError saying what is missing if unusable."""
    last = root / LAST
    if last.is_symlink() and not last.exists():
        problem = f"it points at {os.readlink(last)}, which does not exist"
    elif not last.exists():
        where = root.parent
        problem = (
            "it does not exist (no checkpoint was saved there)"
            if where.is_dir()
            else f"it does not exist ({where} does not exist: is out= right?)"
        )
    elif not (last / STATE_NAME).is_file():
        problem = f"it has no {STATE_NAME} (the optimizer, step and RNG state)"
    elif not (last / WEIGHTS_NAME).is_file():
        problem = f"it has no {WEIGHTS_NAME}"
    else:
        return last.resolve()
    raise UsageError(
        f"--resume needs a complete checkpoint at {last}, but {problem}. "
        f"Drop --resume to start a fresh run in {root.parent} instead."
    )


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    current = (root / LAST).resolve()
    for old in steps[: max(0, len(steps) - keep)]:
        if old.resolve() != current:
            shutil.rmtree(old, ignore_errors=True)
