"""Settings read from JSON files into frozen dataclasses, checked at the boundary: one line naming the file and the
setting for an unknown key, a missing one, or a value of the wrong type.

JSON knows numbers, strings, booleans, null, lists and objects; a dataclass field's annotation says which it takes
(``int``, ``float``, ``str``, ``bool``, ``X | None``, ``tuple[...]``). Numbers must be finite (Python's json reads
``NaN`` and ``Infinity``), an integer stands for a float but not the reverse, and a boolean is no number.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, fields
from typing import Any, TypeVar

from multiview.errors import InputError

T = TypeVar("T")


def dataclass_from_json(cls: type[T], raw: object, where: str, error: type[Exception] = InputError) -> T:
    """``cls(**raw)`` once ``raw`` (a parsed JSON value) is known to be an object whose keys are ``cls``'s fields,
    every required one present, each value of its field's type; else ``error`` naming ``where`` (the file)."""
    if not isinstance(raw, dict):
        raise error(f"{where} holds {_json_kind(raw)}, not an object of settings: write {{\"name\": value, ...}}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise error(f"{where}: unknown settings {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    missing = [name for name, f in known.items()
               if name not in raw and f.default is MISSING and f.default_factory is MISSING]  # fmt: skip
    if missing:
        raise error(f"{where}: missing settings {', '.join(missing)}")
    for name, value in raw.items():
        if not _matches(value, hints[name]):
            raise error(f"{where}: {name} is {_json_kind(value)} {_shown(value)}, not {_describe(hints[name])}")
    return cls(**raw)


def _matches(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, list):
            return False
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return all(_matches(item, args[0]) for item in value)
        return len(value) == len(args) and all(_matches(item, arg) for item, arg in zip(value, args))
    if annotation is Any:
        return True
    raise TypeError(f"dataclass_from_json cannot check a {annotation!r} field")


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(arg) for arg in args)
    if origin in (tuple, list):
        return "a list"
    names = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string",
             type(None): "null"}  # fmt: skip
    return names.get(annotation, str(annotation))


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number" if math.isfinite(value) else "a non-finite number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
