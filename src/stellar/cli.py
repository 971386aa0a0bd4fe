"""The ``stellar`` command line. Each subcommand lives with the code it drives.

A command module provides ``add_arguments(parser)`` and ``run(args) -> int``; it is imported
only when its command runs, so ``stellar --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from stellar.errors import UsageError
from stellar.runtime import precision

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "stellar.demo.command",
        "train a small STELLAR on concept scenes, evaluate it, write a report",
    ),
    "train": ("stellar.train.command", "pretrain STELLAR (YAML config + key=value overrides)"),
    "extract": ("stellar.eval.extract", "write per-image features of a folder in shards"),
    "eval": ("stellar.eval.command", "evaluation protocols: linear, knn, seg, recon, invariance"),
    "viz": ("stellar.viz.command", "draw concept maps, PCA and reconstructions of images"),
    "retrieve": ("stellar.viz.retrieve", "index concept tokens; find the nearest to a query"),
    "scenes": ("stellar.demo.scenes_command", "export the procedural concept scenes to a folder"),
    "explore": ("stellar.explore.command", "browse, retrieve and edit concepts in the browser"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` ends each option's line with its default, where it has a value."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0:  # no value, or a flag
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str]) -> int:
    """The command line ``argv`` (without the program name); :func:`console` runs it."""
    top = argparse.ArgumentParser(prog="stellar", description=__doc__.splitlines()[0])
    top.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, and the traceback of usage errors",
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args, rest = top.parse_known_args(argv)
    if args.command is None and rest:  # flags the sub-commands would have read: none given
        top.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(  # other libraries' info (faiss's loader, httpx's requests) is noise
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("stellar").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.command is None:
        top.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    parser = argparse.ArgumentParser(
        prog=f"stellar {args.command}",
        description=COMMANDS[args.command][1],
        formatter_class=HelpFormatter,
    )
    module.add_arguments(parser)
    parse = (
        parser.parse_intermixed_args if getattr(module, "INTERMIXED", False) else parser.parse_args
    )
    args = parse(rest)
    # The encoding commands' --precision: what autocast's "auto" means while the command runs.
    with precision(getattr(args, "precision", "auto")):
        return int(module.run(args) or 0)


def console(argv: list[str] | None = None) -> int:
    """The ``stellar`` console script: :func:`main`, a :class:`~stellar.errors.UsageError`
    printed as one line on stderr (exit status 2; its traceback with ``-v``). Any other
    exception is a bug and keeps its traceback; Ctrl-C is one line too."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in COMMANDS), None)
    prog = f"stellar {command}" if command else "stellar"
    try:
        return main(argv)
    except UsageError as err:
        if "-v" in argv or "--verbose" in argv:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # a second Ctrl-C, or a run stopped after its checkpoint
        if os.environ.get("RANK", "0") == "0":  # torchrun's processes all stop: one says so
            print(f"{prog}: {str(err) or 'interrupted'}", file=sys.stderr)
        return getattr(err, "exit_code", 128 + signal.SIGINT)
