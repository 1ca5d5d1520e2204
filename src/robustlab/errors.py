"""User-facing errors.

Anything a user can get wrong (a path, a name, a setting, a corrupt file) raises ``UserError``.
The CLI prints its message as one line and exits non-zero; library callers can catch it as a
``ValueError``. Programming errors stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """An error caused by the user's input; its message is one self-explaining line."""


def suggestion(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """Build the error for an unknown name, suggesting the closest valid one."""
    choices = sorted(choices)
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return UserError(f"unknown {kind} '{name}'{suggestion(name, choices)}; choose from: {shown}")


def lookup(kind: str, name: str, table: Mapping[str, T]) -> T:
    """``table[name]``; an unknown name raises ``unknown_name(kind, ...)`` (registries' lookup)."""
    if name not in table:
        raise unknown_name(kind, name, table)
    return table[name]


def check_range(
    field: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
) -> float:
    """Validate a numeric setting and name the field when it is out of range (NaN included)."""
    value = float(value)
    if value != value:  # NaN compares unequal to itself
        raise UserError(f"{field} must be a number, got NaN")
    if low is not None and (value < low or (not low_inclusive and value == low)):
        bound = ">=" if low_inclusive else ">"
        raise UserError(f"{field} must be {bound} {low}, got {value:g}")
    if high is not None and value > high:
        raise UserError(f"{field} must be <= {high}, got {value:g}")
    return value


def first_difference(old: Any, new: Any, where: str = "") -> str:
    """The first path where two JSON values differ, as ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key, "<unset>") != new.get(key, "<unset>"):
                path = f"{where}.{key}" if where else str(key)
                return first_difference(old.get(key, "<unset>"), new.get(key, "<unset>"), path)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                return first_difference(a, b, f"{where}[{index}]")
    return f"{where or 'config'}: {_short(old)} -> {_short(new)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
