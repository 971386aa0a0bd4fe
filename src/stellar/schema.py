"""The one configuration checker: typed dataclasses built from plain data, checked field by field.

Every config of the library (the model's :class:`~stellar.models.config.StellarConfig`, the
training run's :class:`~stellar.train.config.TrainConfig` and the sections it holds, whatever
their module) is a dataclass whose annotations say the type (``int``, ``float``, ``bool``,
``str``, ``Literal[...]`` enums, ``X | None``, fixed-length tuples, ``dict``, nested config
dataclasses) and whose field metadata may carry a range (:func:`bounded`). :func:`build` makes
one from a mapping (a YAML file, ``key=value`` overrides, a ``config.json``); :func:`check`
re-checks one built in Python. A violation is a :class:`~stellar.errors.UsageError` naming the
dotted key, what was expected and the value given.

Why not OmegaConf structured configs: OmegaConf 2.3 (the release of the time) rejects
``typing.Literal`` annotations, it has no range rules (a second checker would be needed for
them), and the model config must load from ``config.json`` without a config library. So the
library keeps this one hand-written checker, and nothing else checks field types or ranges.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from stellar.errors import Bounds, UsageError

logger = logging.getLogger(__name__)

# What YAML reads from an unquoted scalar; a str field takes it as its text (``out: 2024``).
_YAML_SCALARS = (bool, int, float, datetime.date)


def bounded(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """A dataclass field with ``default`` whose (non-null) value must lie in the given range."""
    return dataclasses.field(
        default=default, metadata={"bounds": Bounds(low, high, low_open, high_open)}
    )


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_names(cls: type) -> list[str]:
    """The field names of a config dataclass, in order."""
    return [f.name for f in dataclasses.fields(cls)]


def nested(cls: type) -> dict[str, type]:
    """The fields of ``cls`` that are config sections (dataclasses), by name."""
    return {name: hint for name, hint in _hints(cls).items() if dataclasses.is_dataclass(hint)}


def build(
    cls: type,
    data: Any,
    where: str = "",
    texts: Mapping[str, str] | None = None,
    unknown: Literal["raise", "warn"] = "raise",
) -> Any:
    """A ``cls`` from a mapping of its fields (sections as nested mappings), checked.

    Args:
        cls: the config dataclass.
        data: its fields by name; absent ones keep their defaults.
        where: the dotted prefix of the keys in messages (``"augment."``).
        texts: the override texts as typed, by dotted key. Given (YAML input), str fields
            take a YAML scalar as its text and float fields a numeric string (YAML 1.1 reads
            ``1e-3`` as a string); without it (JSON input) every type must match exactly.
        unknown: ``"raise"`` on keys that are not fields, or ``"warn"`` and drop them.
    """
    if not isinstance(data, Mapping):
        what = f"config section {where.rstrip('.')}" if where else "a config"
        raise UsageError(f"{what}: expected a mapping, got {type(data).__name__} {data!r}")
    names = field_names(cls)
    extra = sorted(map(str, set(data) - set(names)))
    if extra and unknown == "raise":
        under = f" under {where.rstrip('.')}" if where else ""
        raise UsageError(
            f"unknown config key(s) {', '.join(where + k for k in extra)}; "
            f"valid keys{under}: {', '.join(names)}"
        )
    if extra:
        logger.warning("ignoring unknown config key(s) %s", ", ".join(where + k for k in extra))
    sections, fields = nested(cls), {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        value, key = data[name], where + name
        if name in sections and not dataclasses.is_dataclass(value):
            kwargs[name] = build(sections[name], value, key + ".", texts, unknown)
        elif name in sections:
            check(value, key + ".", texts)
            kwargs[name] = value
        else:  # checked before construction, so a message names the key with its prefix
            kwargs[name] = _checked(fields[name], _hints(cls)[name], value, key, texts)
    return cls(**kwargs)


def check(obj: Any, where: str = "", texts: Mapping[str, str] | None = None) -> None:
    """Check (and normalise in place) every field of a config dataclass and its sections.

    ints must be integers (not bools), floats real numbers (stored as float), bools and strs
    exactly that, ``Literal`` one of its values; a field with :func:`bounded` metadata must
    also lie in its range. Raises :class:`~stellar.errors.UsageError` naming the key.
    """
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        key, value, hint = where + f.name, getattr(obj, f.name), hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise UsageError(
                    f"{key}: expected a mapping (a config section), got {type(value).__name__} "
                    f"{value!r}"
                )
            check(value, key + ".", texts)
            continue
        converted = _checked(f, hint, value, key, texts)
        if converted is not value:
            setattr(obj, f.name, converted)


def _checked(
    f: dataclasses.Field, hint: Any, value: Any, key: str, texts: Mapping[str, str] | None
) -> Any:
    """One field's value converted to its annotation and inside its range."""
    text = texts.get(key) if texts is not None else None
    converted = convert(value, hint, key, text, lenient=texts is not None)
    bounds = f.metadata.get("bounds")
    if bounds is not None and converted is not None and converted not in bounds:
        options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        nullable = " or null" if len(options) < len(typing.get_args(hint)) else ""
        expected = f"{describe(options[0])} {bounds.describe()}{nullable}"
        raise UsageError(f"{key}: expected {expected}, got {converted!r}")
    return converted


_FAIL = object()


def convert(value: Any, hint: Any, key: str, text: str | None = None, lenient: bool = False) -> Any:
    """``value`` as the annotated type, or a UsageError naming key, expected type and value.

    ``text`` is the override's text as typed: a str field keeps it verbatim (YAML would read
    ``out=010`` as the integer 8). ``lenient`` admits YAML's readings (see :func:`build`).
    """
    result = _convert(value, hint, key, text, lenient)
    if result is _FAIL:
        expected = describe(hint)
        if value is None:
            expected += " (null is not allowed here)"
        raise UsageError(f"{key}: expected {expected}, got {value!r}")
    return result


def _convert(value: Any, hint: Any, key: str, text: str | None, lenient: bool) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None if type(None) in args else _FAIL
        for option in (a for a in args if a is not type(None)):
            result = _convert(value, option, key, text, lenient)
            if result is not _FAIL:
                return result
        return _FAIL
    if hint is Any:
        return value
    if hint is bool:
        return value if isinstance(value, bool) else _FAIL
    if hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return int(value) if ok else _FAIL
    if hint is float:
        if lenient and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return _FAIL
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return float(value) if ok else _FAIL
    if hint is str:
        if isinstance(value, str):
            return value
        if lenient and isinstance(value, _YAML_SCALARS):
            return text if text is not None else str(value)
        return _FAIL
    if origin is Literal:
        same = [a for a in args if a == value and type(a) is type(value)]
        return same[0] if same else _FAIL
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            return _FAIL
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(convert(v, t, f"{key}[{i}]", lenient=lenient) for i, (v, t) in pairs)
    if origin is dict:
        return value if isinstance(value, dict) else _FAIL
    raise TypeError(f"{key}: the config checker does not know the annotation {hint!r}")


def describe(hint: Any) -> str:
    """An annotation in words: ``"an integer or null"``, ``"one of 'ddp', 'fsdp'"``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args)} values"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(hint, "null" if hint is type(None) else getattr(hint, "__name__", str(hint)))
