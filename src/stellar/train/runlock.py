"""The run folder ``out=``: one training at a time, a fresh run never silently replaces one, and
a stop request (Ctrl-C, SIGTERM) ends the run with a checkpoint.

The lock is ``fcntl.flock`` on ``out/.lock``: the kernel releases it when the holding process
exits, however it exits, so a lock left by a killed run is never stale. The file records who
holds it (pid, host, command) for the error the second run prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from stellar.errors import UsageError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints", "tensorboard")


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[Path]:
    """Hold the run folder ``out`` (created if missing) for the duration of the block.

    Raises:
        UsageError: another live process holds it; the message names that process.
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): run unlocked rather than not at all
        yield Path(out)
        return
    folder = Path(out)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:  # an existing file, a path under a file, a read-only place
        raise UsageError(
            f"out={folder} cannot hold a run ({err.strerror}: {err.filename}); pass a folder "
            "you can write to"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text(errors="replace").strip() or "another process"
            raise UsageError(
                f"{folder} is in use by a running training ({holder}); wait for it to finish "
                "or pass another out="
            ) from None
        os.ftruncate(fd, 0)
        command = " ".join(sys.argv)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: {command}\n".encode())
        yield folder
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def clean_orphaned_temps(out: str | Path) -> int:
    """Delete the temporary files a killed run left in ``out`` (call while holding the lock).

    Only the writers' temporary names count, in the run folder and its checkpoints: our
    atomic writes' hidden ``.*.tmp`` and the safetensors writer's own ``.tmpXXXXXX`` (the size
    of the weights). Returns how many were deleted.
    """
    folder = Path(out)
    found = [
        p
        for where in ("", "checkpoints/**/")
        for pattern in (".*.tmp", ".tmp??????")
        for p in folder.glob(where + pattern)
        if p.is_file() or p.is_symlink()
    ]
    size = sum(p.lstat().st_size for p in found)
    for path in found:
        path.unlink()
    if found:
        logger.info(
            "removed %d temporary file(s) (%.1f MB) left by an interrupted run in %s",
            len(found),
            size / 1e6,
            folder,
        )
    return len(found)


def check_fresh_run(out: str | Path, overwrite: bool) -> list[Path]:
    """The files of the run already in ``out`` that a fresh run replaces ([] when none).

    Raises:
        UsageError: ``out`` holds a run and ``overwrite`` is False.
    """
    old = [Path(out) / n for n in RUN_FILES if os.path.lexists(Path(out) / n)]
    if old and not overwrite:
        # a run stopped before its first checkpoint has nothing to continue from
        resume = (
            ""
            if not (Path(out) / "checkpoints" / "last").exists()
            else ("pass --resume (resume=True) to continue it, ")
        )
        raise UsageError(
            f"{out} already holds a run ({', '.join(p.name for p in old)}): {resume}pass "
            "--overwrite (overwrite=True) to start afresh there, or another out= for a new run"
        )
    return old


def delete_run_files(paths: list[Path]) -> None:
    """Delete what :func:`check_fresh_run` returned (the replaced run's files)."""
    if paths:
        logger.warning("overwrite: deleting the previous run's %s", ", ".join(map(str, paths)))
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


class TrainingStopped(KeyboardInterrupt):
    """The run stopped on a signal after saving a checkpoint; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM, which a scheduler sends before it kills a job, during a run.

    The first asks the loop to stop after the current step (it then saves a checkpoint); a
    second Ctrl-C stops at once. Handlers are installed only in the main thread.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning(
            "%s: stopping after this step and saving a checkpoint (Ctrl-C again stops at once)",
            signal.Signals(signum).name,
        )

    def agreed(self, device: torch.device, distributed: bool) -> int:
        """The signal any process received (0: none); under torchrun every rank calls this at
        the same step, so all stop at the same one."""
        if not distributed:
            return self.signum
        flag = torch.tensor([self.signum], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag)
