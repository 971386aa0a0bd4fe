"""Small informational commands."""

from __future__ import annotations

import argparse

from stellar.models.registry import get_config, is_released, list_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``stellar models`` takes no arguments."""


def run(args: argparse.Namespace) -> int:
    """Print each registered model with its size and whether official weights exist."""
    print(f"{'name':<14} {'width':>5} {'depth':>5} {'patch':>5} {'tokens':>6}  weights")
    for name in list_models():
        c = get_config(name)
        e = c.encoder
        kind = "released (microsoft/STELLAR)" if is_released(name) else "random-init preset"
        print(
            f"{name:<14} {e.hidden_size:>5} {e.num_hidden_layers:>5} {e.patch_size:>5} "
            f"{c.num_sparse_tokens:>6}  {kind}"
        )
    return 0
