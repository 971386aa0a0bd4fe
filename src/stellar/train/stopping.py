"""Stopping a run: Ctrl-C or SIGTERM ends it after the current step, with a checkpoint."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import torch

logger = logging.getLogger(__name__)


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
