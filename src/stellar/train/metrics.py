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
        """Flush and close."""
        self.file.close()
        if self.writer is not None:
            self.writer.close()


class PendingScalars:
    """Step scalars held on the device until the loop reads them all at once: once per
    ``log_every`` steps, with one all-reduce, instead of a device wait every step."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, torch.Tensor]]] = []

    def add(self, step: int, scalars: dict[str, torch.Tensor]) -> None:
        """Keep the 0-dim tensors of step ``step`` (the 0-based index it trained at)."""
        self.rows.append((step, scalars))

    def read(self) -> list[tuple[int, dict[str, float]]]:
        """Every kept step's scalars averaged over ranks, as floats; forget them."""
        if not self.rows:
            return []
        flat = {
            f"{i:08d}/{name}": value
            for i, (_, scalars) in enumerate(self.rows)
            for name, value in scalars.items()
        }
        values = mean_across_ranks(flat)
        out = []
        for i, (step, scalars) in enumerate(self.rows):
            out.append((step, {name: values[f"{i:08d}/{name}"] for name in scalars}))
        self.rows = []
        return out


def mean_across_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Average scalar tensors over ranks (one all-reduce) and return floats."""
    names = sorted(values)
    # FSDP2 returns replicated DTensors (e.g. the clipped grad norm): take the plain tensor.
    local = [getattr(v, "full_tensor", lambda v=v: v)() for v in map(values.get, names)]
    stacked = torch.stack([v.detach().float().reshape(()) for v in local])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(names, stacked.tolist(), strict=True))
