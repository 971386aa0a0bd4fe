"""``stellar eval PROTOCOL``: the evaluation protocols of arXiv 2602.01905 on a frozen model.

A thin dispatcher: each protocol module (:data:`PROTOCOLS`) owns its options, its run and its
table. Every protocol prints a table (accuracies and mIoU in percent), writes
``OUT/metrics.json`` (fractions in [0, 1], PSNR in dB, NaN as null) and checks its inputs
before any model or data work.
"""

from __future__ import annotations

import argparse
import importlib
import logging

from stellar.eval.baseline import parse_baseline
from stellar.eval.common import METRICS_NAME, write_json
from stellar.outputs import output_folder
from stellar.runtime import encoding_dtype, pick_device

logger = logging.getLogger(__name__)

# protocol -> (module, help)
PROTOCOLS: dict[str, tuple[str, str]] = {
    "linear": ("stellar.eval.linear", "linear probe (top-1 / top-5) on pooled frozen features"),
    "knn": ("stellar.eval.knn", "weighted k-NN classification (DINO protocol)"),
    "seg": ("stellar.eval.segmentation", "linear segmentation probe on the dense grid (mIoU)"),
    "recon": (
        "stellar.eval.recon_probe",
        "reconstruction probe: a fresh decoder on frozen features (PSNR, SSIM, LPIPS, rFID)",
    ),
    "invariance": (
        "stellar.eval.invariance",
        "crop invariance of each representation and the L / S equivariance partition",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-command per protocol, defined by its module."""
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    for name, (module, help_text) in PROTOCOLS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=parser.formatter_class
        )
        importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Run ``stellar eval PROTOCOL``: compute, print the table, write ``OUT/metrics.json``."""
    if args.baseline is not None:
        parse_baseline(args.baseline)  # a malformed spec or a missing file fails first
    inputs = [getattr(args, k, None) for k in ("train", "val", "data")]
    # one protocol's results per folder: another protocol's metrics.json is not replaced
    job = f"stellar eval {args.protocol}"
    with output_folder(args.out or f"eval-{args.protocol}", job, inputs=inputs) as args.out_dir:
        protocol = importlib.import_module(PROTOCOLS[args.protocol][0])
        # recorded: what --precision resolves to here (a probe of feature folders: theirs)
        args.precision = "bf16" if encoding_dtype(pick_device(args.device)) else "fp32"
        result = protocol.run(args)  # under --precision (stellar.cli)
        settings = {k: v for k, v in vars(args).items() if k not in ("protocol", "out_dir")}
        write_json(
            args.out_dir / METRICS_NAME, {"protocol": args.protocol, "settings": settings, **result}
        )
    # the table is the command's result on stdout (logging goes to stderr)
    print("\n".join(protocol.tables(result)))
    logger.info("wrote %s", args.out_dir / METRICS_NAME)
    return 0
