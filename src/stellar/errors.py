"""Bad user input: :class:`UsageError`, the one range rule, and argparse types for numbers.

A leaf module (it imports nothing from ``stellar``), so every layer can raise its error.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class UsageError(ValueError):
    """The user asked for something invalid (a flag, a config key, a path, a file's content).

    The ``stellar`` console script prints it as one line (exit status 2); every other
    exception is a bug and keeps its traceback.
    """


@dataclass(frozen=True)
class Bounds:
    """A numeric interval from ``low`` (``high`` None: unbounded above); NaN, inf never inside."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        lo, hi = self.low, self.high
        return (
            math.isfinite(x)
            and (x > lo or (not self.low_open and x == lo))
            and (hi is None or x < hi or (not self.high_open and x == hi))
        )

    def describe(self) -> str:
        """The rule in words: ``">= 1"``, ``"> 0"``, ``"in [0, 1)"``."""
        if self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"
        return f"{'>' if self.low_open else '>='} {_num(self.low)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def number_type(kind: type, bounds: Bounds) -> Callable[[str], Any]:
    """An argparse ``type=``: the text as ``kind`` (int or float) inside ``bounds``."""
    noun = "an integer" if kind is int else "a finite number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value not in bounds:
            raise argparse.ArgumentTypeError(f"expected {noun} {bounds.describe()}, got {text!r}")
        return value

    return parse


positive_int = number_type(int, Bounds(low=1))
nonneg_int = number_type(int, Bounds(low=0))
positive_float = number_type(float, Bounds(low=0, low_open=True))
nonneg_float = number_type(float, Bounds(low=0))
