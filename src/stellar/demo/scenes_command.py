"""``stellar scenes``: export the procedural concept scenes as an image folder."""

from __future__ import annotations

import argparse

from stellar.data.scenes import SHAPES, export_scenes
from stellar.data.scenes.render import MIN_SIZE
from stellar.errors import Bounds, nonneg_int, number_type, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, help="new folder for images/, masks/, instances/, labels.jsonl"
    )
    parser.add_argument(
        "--split",
        default="val",
        choices=["train", "val", "test"],
        help="each split is its own scenes (a probe's two folders: train and val)",
    )
    parser.add_argument("-n", "--count", type=positive_int, default=1000, help="scenes")
    size = number_type(int, Bounds(low=MIN_SIZE))
    parser.add_argument("--size", type=size, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="with --split, fixes the scenes")
    parser.add_argument("--overwrite", action="store_true", help="replace an export in --out")


def run(args: argparse.Namespace) -> int:
    path = export_scenes(args.out, args.split, args.count, args.size, args.seed, args.overwrite)
    classes = 1 + len(SHAPES)  # the masks: 0 background, 1 + the shape's class
    print(f"wrote {args.count} {args.split} scenes to {path} (`eval seg --num-classes {classes}`)")
    return 0
