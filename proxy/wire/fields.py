"""Reading a JSON answer field by field: each helper returns the value or raises :class:`WireError` naming the
field and what it should have been."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class WireError(ValueError):
    """An answer that is not the shape this version knows."""


def obj_of(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise WireError(f"{what} is not a JSON object")
    return data


def text(data: Mapping[str, Any], key: str, what: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise WireError(f"{what}: {key!r} is not a string")
    return value


def number(data: Mapping[str, Any], key: str, what: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"{what}: {key!r} is not a number")
    return float(value)


def integer(data: Mapping[str, Any], key: str) -> int | None:
    """An integer, or None for anything else (a step number the reader may do without)."""
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def flag(data: Mapping[str, Any], key: str, what: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise WireError(f"{what}: {key!r} is not true or false")
    return value


def list_of(data: Mapping[str, Any], key: str, what: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise WireError(f"{what}: {key!r} is not a list")
    return value


def strings(data: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    values = list_of(data, key, what)
    if not all(isinstance(value, str) for value in values):
        raise WireError(f"{what}: {key!r} is not a list of strings")
    return tuple(values)


def string_map(data: Mapping[str, Any], key: str, what: str) -> dict[str, str]:
    value = data.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise WireError(f"{what}: {key!r} is not an object of strings")
    return dict(value)
