"""``stellar train``: pretrain from a preset or YAML with ``key=value`` overrides.

A run folder (``out=``) holds one run: a fresh run refuses a folder that already holds one
unless ``--overwrite`` is given, and ``--resume`` continues with the settings saved in the
folder (changing only what :data:`~stellar.train.config.RESUMABLE_KEYS` allows).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path

from stellar.errors import UsageError
from stellar.runtime import DistInfo
from stellar.train.config import (
    RESUMABLE_KEYS,
    TrainConfig,
    check_fresh_run,
    load_config,
    preset_names,
    resume_config,
)
from stellar.train.runlock import clean_orphaned_temps, run_lock

logger = logging.getLogger(__name__)

# key=value overrides may come before or after the flags (cli.py reads this).
INTERMIXED = True
DEFAULT_PRESET = "cpu-smoke"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stellar train``."""
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


def prepare(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration; every check before any work.

    Raises:
        UsageError: bad settings; ``--resume`` without a complete checkpoint or with a
            change it does not allow; a fresh run into a run folder without ``--overwrite``.
    """
    from stellar.train.checkpoint import resume_checkpoint

    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in out=, --overwrite replaces it: pick one")
    cfg = load_config(args.config or DEFAULT_PRESET, args.overrides)
    out = Path(cfg.out)
    if args.resume:
        try:
            resume_checkpoint(out / "checkpoints")
        except ValueError as err:  # what is missing in the run folder: the user's to fix
            raise UsageError(str(err)) from None
        # Without --config only the overrides typed count; with it, the whole configuration.
        typed = None if args.config else [o.partition("=")[0].strip() for o in args.overrides]
        cfg, changes = resume_config(out, cfg, typed)
        for change in changes:
            logger.info("resuming %s with a changed setting: %s", out, change)
        return cfg
    check_fresh_run(out, args.overwrite)  # the trainer deletes, once every rank has checked
    return cfg


def run(args: argparse.Namespace) -> int:
    """Build the trainer (under torchrun when launched by it) and train."""
    from stellar.train.distributed import setup, teardown

    cfg = prepare(args)  # every process checks before any of them deletes
    dist = setup()
    try:
        # one run per folder: rank 0 holds the lock for the whole run (ranks share the folder)
        with run_lock(cfg.out) if dist.is_main else contextlib.nullcontext():
            _train(cfg, dist, args.resume, args.overwrite)
    finally:
        teardown()
    return 0


def _train(cfg: TrainConfig, dist: DistInfo, resume: bool, overwrite: bool) -> None:
    """Clean what a killed run left, train, and print the summary."""
    from stellar.train.trainer import Trainer

    if dist.is_main:
        clean_orphaned_temps(cfg.out)
    last = Trainer(cfg, dist).train(resume=resume, overwrite=overwrite)
    if dist.is_main:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k not in ("epoch",))
        print(f"done: {terms or 'nothing left to train'}\ncheckpoint: {cfg.out}/checkpoints/last")
