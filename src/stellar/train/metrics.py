"""Training metrics: scalars read once per log interval, one JSON line per logged step, and
TensorBoard when installed."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from stellar.outputs import atomic_write

logger = logging.getLogger(__name__)


class MetricsLog:
    """Per-step JSONL metrics and, when available, TensorBoard scalars."""

    def __init__(self, out: Path, tensorboard: bool, start_step: int = 0) -> None:
        path = out / "metrics.jsonl"
        # A resumed run keeps the rows up to its checkpoint; those logged after it (before a
        # crash, maybe cut short, in bytes that need not decode) are logged again. A fresh run
        # starts a fresh file.
        kept = []
        for line in path.read_bytes().splitlines() if start_step > 0 and path.is_file() else []:
            with contextlib.suppress(ValueError, AttributeError, TypeError):  # not a row of ours
                if json.loads(line).get("step", start_step + 1) <= start_step:
                    kept.append(line + b"\n")
        atomic_write(path, lambda tmp: tmp.write_bytes(b"".join(kept)))
        self.file = open(path, "a")  # noqa: SIM115 - closed in close()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                logger.info("tensorboard is not installed: metrics go to metrics.jsonl only")

    def write(self, scalars: dict[str, float]) -> None:
        """Append one step's scalars."""
        self.file.write(json.dumps(scalars) + "\n")
        self.file.flush()
        if self.writer is not None:
            step = int(scalars["step"])
            for name, value in scalars.items():
                if name not in ("step", "epoch"):
                    self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def mean_across_ranks(
    rows: list[tuple[int, dict[str, torch.Tensor]]],
) -> list[tuple[int, dict[str, float]]]:
    """Steps' scalars, held on the device as 0-dim tensors, averaged over ranks with one
    all-reduce and read at once: the loop's one wait for the device per ``log_every`` steps."""
    names = list(rows[0][1])  # every step has the same scalars
    stacked = torch.stack([torch.stack([s[n].float() for n in names]) for _, s in rows])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return [
        (step, dict(zip(names, v, strict=True)))
        for (step, _), v in zip(rows, stacked.tolist(), strict=True)
    ]
