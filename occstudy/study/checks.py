"""Validation helpers of the study definitions: each raises :class:`StudyError` naming the
field path and the value (``Study.seeds=(0, 0): duplicate value 0``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class StudyError(ValueError):
    """An invalid study definition or study file; the message names the field path and value."""


def _err(path: str, value: Any, why: str) -> StudyError:
    return StudyError(f"{path}={value!r}: {why}")


def _number(path: str, value: Any) -> float:
    # bool is an int subclass; True as a learning rate is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _err(path, value, "must be a number")
    if not math.isfinite(value):
        raise _err(path, value, "must be finite")
    return float(value)


def _value(path: str, value: Any) -> float | str:
    """A search-space value: a finite number, or a non-empty name (categorical params)."""
    if isinstance(value, str):
        if not value:
            raise _err(path, value, "must be a non-empty name or a number")
        return value
    return _number(path, value)


def _integer(path: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(path, value, "must be an int")
    if value < minimum:
        raise _err(path, value, f"must be >= {minimum}")
    return value


def _optional_integer(path: str, value: Any, minimum: int) -> int | None:
    return None if value is None else _integer(path, value, minimum)


def _choice(path: str, value: Any, valid: Sequence[str]) -> str:
    if value not in valid:
        raise _err(path, value, f"valid: {', '.join(valid)}")
    return str(value)


def _tuple(path: str, value: Any) -> tuple[Any, ...]:
    # Users naturally write lists; a str would silently become a tuple of characters.
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise _err(path, value, "must be a tuple")
    return tuple(value)


def _unique(path: str, values: tuple[Any, ...]) -> None:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise _err(path, values, f"duplicate value {v!r}")
        seen.add(v)


def _set(obj: Any, name: str, value: Any) -> None:
    # Normalising a frozen dataclass's own field in __post_init__.
    object.__setattr__(obj, name, value)
