"""``stellar train``: pretrain from a preset or YAML with ``key=value`` overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

from stellar.train.config import load_config, preset_names

# key=value overrides may come before or after the flags (cli.py reads this).
INTERMIXED = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stellar train``."""
    parser.add_argument(
        "--config",
        default="cpu-smoke",
        help=f"a preset ({', '.join(preset_names())}) or a YAML file",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from out/checkpoints/last (an error if it is missing or incomplete)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. optim.lr=1e-4 batch_size=64")


def run(args: argparse.Namespace) -> int:
    """Build the trainer (under torchrun when launched by it) and train."""
    from stellar.train.checkpoint import resume_checkpoint
    from stellar.train.distributed import setup, teardown
    from stellar.train.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    if args.resume:  # fail before the data and model are built
        resume_checkpoint(Path(cfg.out) / "checkpoints")
    dist = setup()
    try:
        last = Trainer(cfg, dist).train(resume=args.resume)
        if dist.is_main:
            terms = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k not in ("epoch",))
            print(
                f"done: {terms or 'nothing left to train'}\ncheckpoint: {cfg.out}/checkpoints/last"
            )
    finally:
        teardown()
    return 0
