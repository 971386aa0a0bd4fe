"""Bad user input: the :class:`UsageError` type and the one place range rules live.

A leaf module (it imports nothing from ``stellar``), so every layer can raise
:class:`UsageError` and every command can use the argparse ``type=`` functions below.
:class:`Bounds` is the single range rule: the argparse types here and the config fields'
metadata (``train/config.py``, ``models/config.py``) both check against it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class UsageError(ValueError):
    """The user asked for something invalid (a flag, a config key, a path, a file's content).

    Its message names what was expected and what was given, so the ``stellar`` console
    script prints it as one line (exit status 2) without a traceback. Every other exception
    is a bug and keeps its traceback. A ``ValueError`` subclass: the Python API's
    ``ValueError`` contract for bad arguments holds.
    """


@dataclass(frozen=True)
class Bounds:
    """A closed or open numeric interval; ``None`` leaves that side unbounded.

    ``Bounds(low=1)`` is ">= 1", ``Bounds(0, 1, high_open=True)`` is "in [0, 1)". NaN and
    infinite values are never inside.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = self.low is None or value > self.low or (not self.low_open and value == self.low)
        below = (
            self.high is None or value < self.high or (not self.high_open and value == self.high)
        )
        return above and below

    def describe(self) -> str:
        """The rule in words: ``">= 1"``, ``"> 0"``, ``"in [0, 1)"``."""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "any number"

    def check(self, value: float, name: str) -> None:
        """Raise :class:`UsageError` naming ``name``, the rule and ``value`` if it is outside."""
        if value not in self:
            raise UsageError(f"{name}: expected {self.describe()}, got {value!r}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def number_type(kind: type, bounds: Bounds) -> Callable[[str], Any]:
    """An argparse ``type=`` function: the text as ``kind`` (int or float) inside ``bounds``.

    argparse reports its error as ``argument --k: expected an integer >= 1, got '0'`` and
    exits with status 2, before the command does any work.
    """
    noun = "an integer" if kind is int else "a finite number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value not in bounds:
            raise argparse.ArgumentTypeError(f"expected {noun} {bounds.describe()}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} {bounds.describe()}"
    return parse


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` for integers in ``[low, high]`` (either side may be open-ended)."""
    return number_type(int, Bounds(low, high))


positive_int = number_type(int, Bounds(low=1))
nonneg_int = number_type(int, Bounds(low=0))
positive_float = number_type(float, Bounds(low=0, low_open=True))
nonneg_float = number_type(float, Bounds(low=0))
probability = number_type(float, Bounds(0, 1))
