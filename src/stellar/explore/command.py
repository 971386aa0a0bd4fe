"""``stellar explore``: the concept explorer in the browser (a Gradio app, the ``app`` extra).

Serves on 127.0.0.1 unless ``--host`` says otherwise, and makes a public share link only with
``--share``. Gradio is imported here, when the command runs, never at ``import stellar``.
"""

from __future__ import annotations

import argparse

from stellar.errors import Bounds, UsageError, number_type
from stellar.explore.retrieval import CACHE_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="path, run folder, model name or org/name")
    parser.add_argument(
        "--collection",
        default=None,
        help="image folder to pick from and search (default: example concept scenes)",
    )
    parser.add_argument("--vq-model", default=None, help="MaskGIT-VQGAN weights (vq-head models)")
    parser.add_argument(
        "--cache-dir",
        default=str(CACHE_DIR),
        help="where the example scenes and the collection's token indexes are kept",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument(
        "--port",
        type=number_type(int, Bounds(low=1, high=65535)),
        default=7860,
        help="port to serve on",
    )
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve the page until interrupted."""
    try:
        from stellar.explore.app import build_app
    except ImportError as err:
        raise UsageError(
            f"stellar explore needs Gradio ({err}): pip install 'stellar-ssl[app]'"
        ) from err
    from stellar.explore.explorer import Explorer
    from stellar.runtime import pick_device

    device = str(pick_device(args.device))
    explorer = Explorer.load(args.model, args.collection, args.vq_model, device, args.cache_dir)
    try:
        build_app(explorer).launch(
            server_name=args.host, server_port=args.port, share=args.share, max_file_size="64mb"
        )
    except OSError as err:  # the port is taken, or the address is not this machine's
        raise UsageError(f"cannot serve on {args.host}:{args.port}: pass another --port") from err
    return 0
