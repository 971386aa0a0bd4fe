"""The ``stellar demo`` application, beside the library."""

from stellar.demo.command import *  # noqa: F403
from stellar.demo.command import accuracy_gap_stderr, table, verdicts  # noqa: F401
