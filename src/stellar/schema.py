"""The one configuration checker: a config dataclass built from plain data, field by field.

Configs (:class:`~stellar.models.config.StellarConfig`, :class:`~stellar.train.config.TrainConfig`
and their sections) are dataclasses: annotations give the types (``int``, ``float``, ``bool``,
``str``, ``Literal[...]``, ``X | None``, fixed-length tuples, ``dict``, nested sections) and
:func:`bounded` fields a range. :func:`build` makes one from a mapping (YAML, overrides,
``config.json``) or re-checks one made in Python; rules that join fields live in the config's
``__post_init__``. OmegaConf structured configs were considered: 2.3 rejects ``Literal`` and has
no ranges, so a second checker would still be needed beside it. :func:`parse_yaml` is the one
YAML reader (presets, config files, overrides, a run's ``config.yaml``).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import numbers
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from stellar.errors import Bounds, UsageError

logger = logging.getLogger(__name__)
_FAIL = object()


def bounded(default: Any, **bounds: Any) -> Any:
    """A dataclass field whose non-null value must lie in ``Bounds(**bounds)``."""
    return dataclasses.field(default=default, metadata={"bounds": Bounds(**bounds)})


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls: type, data: Any, where: str = "", unknown: Literal["raise", "warn"] = "raise"):
    """A checked ``cls`` from a mapping of its fields (sections as nested mappings).

    Args:
        data: its fields by name (absent ones keep their defaults), or a ``cls`` to re-check.
        where: the dotted prefix of its keys in messages (``"augment."``).
        unknown: ``"raise"`` on keys that are not fields, or ``"warn"`` and drop them.

    Raises:
        UsageError: naming the dotted key, what was expected and the value given.
    """
    if isinstance(data, cls):
        data = {f.name: getattr(data, f.name) for f in dataclasses.fields(cls)}
    if not isinstance(data, Mapping):
        what = f"config section {where.rstrip('.')}" if where else "a config"
        raise UsageError(f"{what}: expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = sorted(map(str, set(data) - set(fields)))
    if extra and unknown == "raise":
        under = f" under {where.rstrip('.')}" if where else ""
        raise UsageError(
            f"unknown config key(s) {', '.join(where + k for k in extra)}; "
            f"valid keys{under}: {', '.join(fields)}"
        )
    if extra:
        logger.warning("ignoring unknown config key(s) %s", ", ".join(where + k for k in extra))
    kwargs = {}
    for name in fields.keys() & data.keys():
        hint, value, key = hints(cls)[name], data[name], where + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value, key + ".", unknown)
            continue
        kwargs[name] = convert(value, hint, key)
        bounds = fields[name].metadata.get("bounds")
        if bounds is not None and kwargs[name] is not None and kwargs[name] not in bounds:
            nullable = " or null" if type(None) in typing.get_args(hint) else ""
            number = "an integer" if int in (hint, *typing.get_args(hint)) else "a number"
            expected = f"{number} {bounds.describe()}{nullable}"
            raise UsageError(f"{key}: expected {expected}, got {kwargs[name]!r}")
    return cls(**kwargs)


def convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the annotated type, or a UsageError naming key, expected type and value.

    A str field takes a YAML scalar (``out: 2024``) or a path as its text.
    """
    result = _convert(value, hint, key)
    if result is _FAIL:
        expected = describe(hint)
        if value is None:
            expected += " (null is not allowed here)"
        raise UsageError(f"{key}: expected {expected}, got {value!r}")
    return result


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None if type(None) in args else _FAIL
        for option in (a for a in args if a is not type(None)):
            if (result := _convert(value, option, key)) is not _FAIL:
                return result
        return _FAIL
    if hint is bool:
        return value if isinstance(value, bool) else _FAIL
    if hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return int(value) if ok else _FAIL
    if hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return float(value) if ok else _FAIL
    if hint is str:
        if isinstance(value, bool | int | float | datetime.date | os.PathLike):
            return str(value)
        return value if isinstance(value, str) else _FAIL
    if origin is Literal:
        same = [a for a in args if a == value and type(a) is type(value)]
        return same[0] if same else _FAIL
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            return _FAIL
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(convert(v, t, f"{key}[{i}]") for i, (v, t) in pairs)
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
    if origin is dict:
        return "a mapping"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(hint, "null" if hint is type(None) else getattr(hint, "__name__", str(hint)))


def parse_yaml(text: str, where: str) -> Any:
    """``text`` read as YAML; a syntax error is a one-line UsageError naming ``where``."""
    try:
        return yaml.load(text, _Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise UsageError(f"{where}: invalid YAML{at} ({problem})") from None


class _Loader(yaml.SafeLoader):
    """YAML that reads ``1e-3`` as a float (YAML 1.2; PyYAML's 1.1 reads a string) and refuses a
    key written twice in a mapping (PyYAML keeps the last one silently)."""

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        if not hasattr(node, "checked"):  # a merge flattens a node in place: check it once
            node.checked = True
            own = [key for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"]
            written = [(key.tag, key.value) for key in own]
            for i, key in enumerate(own):
                if written[i] in written[:i]:
                    raise yaml.constructor.ConstructorError(
                        problem=f"key {key.value} written twice", problem_mark=key.start_mark
                    )
        super().flatten_mapping(node)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)
