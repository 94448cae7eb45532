"""A small typed loader from TOML tables into frozen dataclasses, collecting every error.

Each dataclass field may carry ``metadata`` with ``min``/``max`` bounds. Types understood: bool,
int, float, str, ``X | None``, ``Literal[...]``, ``list[X]``/``tuple[X, ...]``, ``dict[str, Any]``
and nested dataclasses. Errors read ``section.key: got <value>, expected <what>``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

__all__ = ["build", "describe"]

T = TypeVar("T")


def build(cls: type[T], data: Any, path: str, errors: list[str]) -> T | None:
    """Build ``cls`` from ``data``; append one message per problem to ``errors``."""
    if not isinstance(data, Mapping):
        errors.append(f"{path}: got {_show(data)}, expected a table")
        return None
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            errors.append(f"{_join(path, key)}: unknown key (known keys: {known})")
    kwargs: dict[str, Any] = {}
    before = len(errors)
    for name, f in fields.items():
        if not f.init:
            continue
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"{_join(path, name)}: required key is missing")
            continue
        value = _convert(hints[name], data[name], _join(path, name), errors)
        if value is _BAD:
            continue
        _check_bounds(f, value, _join(path, name), errors)
        kwargs[name] = value
    if len(errors) != before:
        return None
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        errors.extend(_join(path, msg) for msg in check())
    return obj


def describe(tp: Any) -> str:
    """Human words for a type, used in error messages."""
    origin = get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        parts = [describe(a) for a in get_args(tp) if a is not type(None)]
        return " or ".join(parts)
    if origin in (list, tuple):
        return f"a list of {_plural(describe(get_args(tp)[0]))}"
    if origin is dict or tp is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return str(tp)


class _Bad:
    pass


_BAD: Any = _Bad()


def _convert(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = get_args(tp)
        # TOML has no null; an empty string or "none" in an env override means unset.
        if type(None) in args and (value is None or value in ("", "none")):
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _convert(arg, value, path, trial)
            if not trial:
                return out
        errors.append(f"{path}: got {_show(value)}, expected {describe(tp)}")
        return _BAD
    if origin is Literal:
        if value in get_args(tp) and type(value) is type(get_args(tp)[0]):
            return value
        errors.append(f"{path}: got {_show(value)}, expected {describe(tp)}")
        return _BAD
    if tp is bool:
        return _typed(value, bool, tp, path, errors)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: got {_show(value)}, expected {describe(tp)}")
            return _BAD
        return value
    if tp is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            errors.append(f"{path}: got {_show(value)}, expected a finite number")
            return _BAD
        return float(value)
    if tp is str:
        return _typed(value, str, tp, path, errors)
    if origin in (list, tuple):
        if not isinstance(value, list):
            errors.append(f"{path}: got {_show(value)}, expected {describe(tp)}")
            return _BAD
        item = get_args(tp)[0]
        items = [_convert(item, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        if any(i is _BAD for i in items):
            return _BAD
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            errors.append(f"{path}: got {_show(value)}, expected a table")
            return _BAD
        return dict(value)
    if dataclasses.is_dataclass(tp):
        before = len(errors)
        out = build(typing.cast(type[Any], tp), value, path, errors)
        return _BAD if len(errors) != before or out is None else out
    raise TypeError(f"unsupported setting type {tp!r} at {path}")  # a bug in a dataclass, not input


def _typed(value: Any, kind: type, tp: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        errors.append(f"{path}: got {_show(value)}, expected {describe(tp)}")
        return _BAD
    return value


def _check_bounds(f: dataclasses.Field[Any], value: Any, path: str, errors: list[str]) -> None:
    if value is None or isinstance(value, bool):
        return
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if isinstance(value, int | float):
        if lo is not None and value < lo:
            errors.append(f"{path}: got {_show(value)}, expected a value >= {lo}")
        if hi is not None and value > hi:
            errors.append(f"{path}: got {_show(value)}, expected a value <= {hi}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _plural(words: str) -> str:
    for article in ("an ", "a "):
        if words.startswith(article):
            return words[len(article) :] + "s"
    return words


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
