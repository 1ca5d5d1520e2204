"""Epsilon parsing for the command line and configs: ``8/255``, ``0.01,0.02``, ``0:0.05:6``.

Epsilons are in [0, 1] pixel units. A single value may be a decimal or a fraction; a list is
comma-separated; a range ``start:stop:count`` gives ``count`` evenly spaced values including
both ends (``0.01:0.05:5`` -> 0.01, 0.02, 0.03, 0.04, 0.05).
"""

from __future__ import annotations

import math

import torch

from robustlab.budgets import check_budget
from robustlab.errors import UserError, check_range


def parse_number(text: str | float, field: str = "eps") -> float:
    """A decimal or a fraction ``a/b`` as a float (no range check), naming ``field`` on error."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    raw = str(text).strip()
    try:
        if "/" in raw:
            numerator, denominator = raw.split("/")
            value = float(numerator) / float(denominator)
        else:
            value = float(raw)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{field} must be a number or a fraction like 8/255, got {raw!r}") from None
    return value


def parse_eps(text: str | float, *, field: str = "eps", high: float = 1.0) -> float:
    """One epsilon: ``'8/255'`` -> 0.0314; must be in ``[0, high]``, not NaN."""
    value = check_range(field, parse_number(text, field), 0.0, high)
    if math.isinf(value) and not math.isinf(high):
        raise UserError(f"{field} must be finite, got {value}")
    return value


def parse_eps_list(text: str, *, field: str = "eps", high: float = 1.0) -> list[float]:
    """A list ``'0.01,0.02'``, a range ``'0.01:0.05:5'`` or a single value; no duplicates."""
    raw = str(text).strip()
    if not raw:
        raise UserError(f"{field} must not be empty")
    if ":" in raw:
        parts = raw.split(":")
        if len(parts) != 3:
            raise UserError(f"{field} range must be start:stop:count, got {raw!r}")
        start = parse_eps(parts[0], field=field, high=high)
        stop = parse_eps(parts[1], field=field, high=high)
        try:
            count = int(parts[2])
        except ValueError:
            raise UserError(f"{field} range count must be an integer, got {parts[2]!r}") from None
        if count < 1:
            raise UserError(f"{field} range count must be >= 1, got {count}")
        check_budget("eps_values", count, f"{field}: the number of epsilons")
        if stop < start:
            raise UserError(f"{field} range must have start <= stop, got {raw!r}")
        values = torch.linspace(start, stop, count, dtype=torch.float64).tolist()
    else:
        parts = raw.split(",")
        check_budget("eps_values", len(parts), f"{field}: the number of epsilons")
        values = [parse_eps(part, field=field, high=high) for part in parts]
    if len(set(values)) != len(values):
        raise UserError(f"{field} lists a value twice: {raw!r}")
    return values
