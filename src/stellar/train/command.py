"""``stellar train``: :func:`stellar.train.train` from the command line."""

from __future__ import annotations

import argparse
import os

from stellar.train import train
from stellar.train.config import DEFAULT_PRESET, RESUMABLE_KEYS, preset_names

# key=value overrides may come before or after the flags (cli.py reads this).
INTERMIXED = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help=f"a preset ({', '.join(preset_names())}) or a YAML file (default: {DEFAULT_PRESET}; "
        "with --resume: the run's saved config.yaml)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from out/checkpoints/last with the run's saved settings; overrides may "
        f"change only {', '.join(sorted(RESUMABLE_KEYS))}",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a fresh run in an out= folder that already holds one, deleting its "
        "checkpoints, metrics and config",
    )
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. optim.lr=1e-4 batch_size=64")


def run(args: argparse.Namespace) -> int:
    out, last, _ = train(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite)
    terms = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k != "epoch")
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(f"done: {terms or 'nothing left to train'}\ncheckpoint: {out}/checkpoints/last")
    return 0
