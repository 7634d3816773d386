"""Typed config dataclasses from JSON-like dicts, every value checked against its field's annotation, and the
JSON files they come from.

A value of the wrong kind (`"steps": "abc"`, `"history_range": 5`, `"lr": NaN`) is named here, with its dotted path,
instead of failing later inside the trainer or torch. Lists become tuples where the field is a tuple, and nested
dicts become the nested dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from astra.errors import AstraError, ConfigError

T = TypeVar("T")
MAX_SEED = 2**32 - 1  # the largest seed numpy's and the simulators' generators take


def read_json_object(
    path: str | Path, label: str | None = None, holding: str | None = None, error: type[AstraError] = ConfigError
) -> dict[str, Any]:
    """The object a JSON file holds. An unreadable file or bad JSON ("cannot read <label>: ...") or a value that is
    not an object ("<path>: expected a JSON object [of <holding>], got list") raises `error`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise error(f"cannot read {label or path}: {problem}") from None
    if not isinstance(data, dict):
        what = f" of {holding}" if holding else ""
        raise error(f"{path}: expected a JSON object{what}, got {type(data).__name__}")
    return data


def dataclass_from_dict(cls: type[T], data: Any, where: str) -> T:
    """`cls(**data)` after checking that every key is a field of `cls` and every value fits its annotation."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object of {cls.__name__} settings, got {_kind(data)}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown {where} setting(s): {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}"
        )
    hints = typing.get_type_hints(cls)
    return cls(**{key: _convert(value, hints[key], f"{where}.{key}") for key, value in data.items()})


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {_kind(value)} fits none of {hint}")
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else dataclass_from_dict(hint, value, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_kind(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {_kind(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(item, args[0], f"{path}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_convert(item, arg, f"{path}[{i}]") for i, (item, arg) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected an object, got {_kind(value)}")
        key_hint, value_hint = args or (Any, Any)
        return {
            _convert(key, key_hint, path): _convert(item, value_hint, f"{path}.{key}") for key, item in value.items()
        }
    return value


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def changed_settings(saved: dict[str, Any], given: dict[str, Any], may_change: frozenset[str]) -> list[str]:
    """"key: old -> new" for every setting (nested ones by dotted key) in which `given` differs from `saved`, except
    those whose top-level name is in `may_change`; both sides compared as JSON holds them (tuples as lists)."""
    as_json = lambda settings: json.loads(json.dumps(settings))  # noqa: E731
    return [
        f"{key}: {old!r} -> {new!r}" for key, old, new in _differences(as_json(saved), as_json(given))
        if key.partition(".")[0] not in may_change
    ]


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    found = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            found += _differences(before, after, f"{prefix}{key}.")
        elif before != after:
            found.append((f"{prefix}{key}", before, after))
    return found
