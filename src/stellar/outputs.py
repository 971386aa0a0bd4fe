"""Output folders: the one guard of every folder a job writes (a training run, ``extract``
shards, a retrieval index, ``eval``, ``viz`` and ``demo`` results, the explorer's cache):
:func:`output_folder` holds it (``fcntl.flock``, which the kernel releases however the process
ends, so a killed job never leaves a stale lock), :func:`check_fresh` / :func:`remove` are the
fresh / overwrite rule, :func:`atomic_write` writes every file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from stellar.errors import UsageError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# the writers' temporaries: atomic_write's ``.NAME.XXXXXXXX.tmp``, safetensors' ``.tmpXXXXXX``
TEMPORARIES = (".*.tmp", ".tmp??????")
# how torch's zip writer words a failed write (PytorchStreamWriter in inline_container.cc; a
# stream error on a device such as /dev/full)
TORCH_WRITER = ("PytorchStreamWriter", "inline_container", "iostream error")
_held: dict[str, int] = {}  # the real paths of the folders this process holds: how many times
_lock_fds: set[int] = set()  # their descriptors


def _close_locks_in_child() -> None:
    """A forked child (a data-loader worker) must not hold a lock after its parent dies."""
    for fd in _lock_fds:
        os.close(fd)
    _lock_fds.clear()


os.register_at_fork(after_in_child=_close_locks_in_child)


@contextlib.contextmanager
def output_folder(
    path: str | os.PathLike[str],
    job: str,
    flag: str = "--out",
    inputs: Iterable[str | Path | None] = (),
    keep_lock: bool = True,
) -> Iterator[Path]:
    """Hold the folder ``path`` for ``job`` (e.g. ``"stellar extract"``) during the block.

    Re-entrant within a process (a command and the function it calls may both hold it).
    Temporaries are removed from the folder and two levels of sub-folders (not through links).
    A folder this call made is removed if the job leaves it empty (refused); ``keep_lock=False``
    leaves no ``.lock`` naming the job (a folder for the hub).

    Raises:
        UsageError: ``path`` is empty, a file, lies under one or in one of the image folders
            ``inputs`` (None entries skipped), or cannot be written (named with ``flag``);
            another live process holds it, or another kind of job wrote it (named in the
            message).
    """
    if not os.fspath(path):  # Path("") would be the working directory
        raise UsageError(f"expected {flag} a folder for the outputs, got ''")
    folder = Path(path)
    key = os.path.realpath(folder)
    where = Path(key)
    for source in map(os.path.realpath, filter(None, inputs)):
        if (
            os.path.isdir(source)
            and where.is_relative_to(source)
            and not any(p.startswith(".") for p in where.relative_to(source).parts)  # scanned
        ):
            raise UsageError(f"{flag} {str(folder)!r} lies inside the input folder {source!r}")
    created = not os.path.exists(key)  # resolved: "ghost/../old" is "old"; False for a bad name
    fd = _open_lock(folder, flag)
    _lock_fds.add(fd)
    holder = None  # this process, once this call took the lock (not an outer call)
    try:
        if key not in _held:
            _lock(fd, folder, job)
            holder = os.getpid()
            _clean_temporaries(folder)
        _held[key] = _held.get(key, 0) + 1
        try:
            yield folder
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
    finally:
        if holder == os.getpid():  # still locked, and not a forked child unwinding the block
            with contextlib.suppress(OSError):
                if not keep_lock or (created and os.listdir(folder) == [LOCK_NAME]):
                    (folder / LOCK_NAME).unlink()
                if created:
                    folder.rmdir()  # only if empty
        if fd in _lock_fds:  # a forked child's hook closed its copies already
            _lock_fds.discard(fd)
            os.close(fd)  # the lock goes with the descriptor that took it


def _open_lock(folder: Path, flag: str) -> int:
    try:
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{flag} {str(folder)!r} is a file; expected a folder for the outputs")
        folder.mkdir(parents=True, exist_ok=True)
        # never through a link: a planted `.lock -> elsewhere` must not be truncated
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
        return os.open(folder / LOCK_NAME, flags, 0o644)
    except OSError as err:  # a path under a file, a read-only place, a full disk, a bad name
        where = "" if err.filename in (None, str(folder)) else f": {err.filename}"
        raise UsageError(
            f"{flag} {str(folder)!r} is not a writable folder ({err.strerror}{where}); pass a "
            "folder you can write to"
        ) from None


def _lock(fd: int, folder: Path, job: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = (folder / LOCK_NAME).read_text(errors="replace").strip() or "another process"
        raise UsageError(
            f"{folder} is in use by {holder}; wait for it to finish or pass another folder"
        ) from None
    # the last holder's job; a folder of another kind of job is never mixed into
    previous = (folder / LOCK_NAME).read_text(errors="replace").split(" (pid")[0]
    if previous not in ("", job) and any(not p.name.startswith(".") for p in folder.iterdir()):
        raise UsageError(f"{folder} holds the results of {previous}; pass another folder")
    record = f"{job} (pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)})\n"
    try:  # over the old record, then cut to its length: a failed write leaves the old one
        os.ftruncate(fd, os.pwrite(fd, record.encode(), 0))
    except OSError as err:
        raise UsageError(f"cannot write {folder / LOCK_NAME} ({err.strerror})") from None


def _clean_temporaries(folder: Path) -> None:
    root = Path(os.path.realpath(folder))
    found = [
        p
        for depth in ("", "*/", "*/*/")
        for pattern in TEMPORARIES
        for p in folder.glob(depth + pattern)
        if (p.is_file() or p.is_symlink())
        # not through a link to a folder elsewhere
        and Path(os.path.realpath(p.parent)) == root / p.parent.relative_to(folder)
    ]
    if not found:
        return
    size = sum(p.lstat().st_size for p in found)
    for path in found:
        path.unlink()
    logger.info(
        "removed %d temporary file(s) (%.1f MB) left by an interrupted job in %s",
        len(found),
        size / 1e6,
        folder,
    )


def check_fresh(
    folder: str | os.PathLike[str],
    patterns: Iterable[str],
    overwrite: bool,
    what: str,
    continue_hint: str = "",
) -> list[Path]:
    """The files of a previous job in ``folder`` (matching the globs ``patterns``), which a
    fresh job replaces: [] when there are none; delete them with :func:`remove`.

    Raises:
        UsageError: there are some and ``overwrite`` is False; the message names them, ``what``
            they are, ``continue_hint`` (how to continue them, if they can be) and the flag.
    """
    old = list(dict.fromkeys(p for pattern in patterns for p in sorted(Path(folder).glob(pattern))))
    if old and not overwrite:
        names = ", ".join(p.name for p in old[:4]) + (", ..." if len(old) > 4 else "")
        raise UsageError(
            f"{folder} already holds {what} ({names}): {continue_hint}pass --overwrite "
            "(overwrite=True) to replace it, or another folder"
        )
    return old


def remove(paths: Iterable[Path]) -> None:
    """Delete what :func:`check_fresh` returned (``overwrite``)."""
    paths = list(paths)
    if paths:
        more = f" and {len(paths) - 4} more" if len(paths) > 4 else ""
        logger.warning("overwrite: deleting %s%s", ", ".join(map(str, paths[:4])), more)
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder and an atomic rename.

    A crash mid-write leaves the previous file intact; ``write`` receives the temp path. The
    file ends up with the mode a plain ``open(path, "w")`` would give it (0o666 & ~umask).

    Raises:
        UsageError: the file could not be written (a full disk, ...), naming it.
    """
    path = Path(path)
    tmp, existed = None, os.path.exists(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        mode = os.fstat(fd).st_mode & 0o777
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), mode)  # ``write`` may have recreated the file (safetensors)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except Exception as err:
        # A full disk, a quota or a vanished folder, as each writer reports it: OSError
        # (Python), SafetensorError (safetensors), a RuntimeError of torch's zip writer.
        if not (
            isinstance(err, OSError)
            or type(err).__name__ == "SafetensorError"
            or (isinstance(err, RuntimeError) and any(m in str(err) for m in TORCH_WRITER))
        ):
            raise
        reason = str(getattr(err, "strerror", None) or err).splitlines()[0]
        kept = "; the previous file is intact" if existed else ""
        raise UsageError(f"could not write {path} ({reason}){kept}") from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make the renames in ``folder`` durable (a power cut could otherwise undo them); best
    effort: the write already succeeded, so a folder that cannot be opened for reading (or a
    filesystem that refuses fsync on directories) is not an error."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
