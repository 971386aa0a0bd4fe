"""Progress bars that behave in a pipe: tqdm on a terminal or in a notebook, a log line every N
steps otherwise (a redrawn bar leaves a log file or CI console thousands of partial lines)."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)
LINES_PER_BAR = 20  # a bar of known length logs about this many lines
UNKNOWN_TOTAL_EVERY = 100  # steps between lines when the length is unknown


class _LogWriter:
    """The file tqdm writes to: each non-blank redraw becomes one log line."""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line and logger.hasHandlers():
            logger.info(line)
        elif line:  # logging not set up (a script under nohup or SLURM): shown as tqdm would be
            print(line, file=sys.stderr, flush=True)


class LoggedBar(tqdm):
    """A tqdm bar that logs a line every ``every`` steps instead of redrawing in place."""

    monitor_interval = 0  # no monitor thread: lines come only at the step cadence

    def __init__(self, *args: Any, every: int, **kwargs: Any) -> None:
        kwargs.update(file=_LogWriter(), miniters=every, mininterval=0, ascii=True)
        super().__init__(*args, **kwargs)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs: Any) -> None:
        # the postfix shows on the next cadence line, not as a line of its own
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def close(self) -> None:
        self.leave = self.leave and self.last_print_n < self.n  # else the end is logged already
        super().close()


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    disable: bool = False,
    **kwargs: Any,
) -> tqdm:
    """``tqdm(iterable, total=..., disable=..., **kwargs)``; when stderr is not a terminal, about
    ``LINES_PER_BAR`` log lines over the bar instead (one every ``UNKNOWN_TOTAL_EVERY`` steps
    when its length is unknown)."""
    in_notebook = "ipykernel" in sys.modules  # Jupyter draws tqdm bars; its stderr is no tty
    if disable or sys.stderr.isatty() or in_notebook:
        return tqdm(iterable, total=total, disable=disable, **kwargs)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    every = max(1, math.ceil(total / LINES_PER_BAR)) if total else UNKNOWN_TOTAL_EVERY
    return LoggedBar(iterable, total=total, every=every, **kwargs)
