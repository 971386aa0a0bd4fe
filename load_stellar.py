"""The model card's first line, ``from load_stellar import load_stellar, list_models``, run
from the root of a checkout (like ``hubconf.py``, it needs no install: ``src/`` comes first)."""

from __future__ import annotations

import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from stellar import create_stellar, list_models, load_stellar  # noqa: E402

__all__ = ["create_stellar", "list_models", "load_stellar"]
