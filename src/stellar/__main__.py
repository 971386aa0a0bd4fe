"""``python -m stellar``: the ``stellar`` console script."""

from stellar.cli import console

raise SystemExit(console())
