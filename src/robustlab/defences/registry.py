"""Defence registry: names -> typed configs -> objectives, and the ``key=value`` front end.

``build_defence("pgd", ["eps=8/255", "steps=7"])`` is what ``robustlab train --defence pgd
--defence-opt eps=8/255 --defence-opt steps=7`` calls: every option is parsed and validated here,
before any data is loaded or any run directory exists.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from robustlab.defences.config import (
    DefenceConfig,
    FastFGSMConfig,
    NSLConfig,
    PGDTrainingConfig,
    TRADESConfig,
)
from robustlab.defences.objectives import (
    DefenceObjective,
    FastFGSMTraining,
    NSLAdversarialRegularization,
    PGDTraining,
    TRADESTraining,
)
from robustlab.errors import UserError, unknown_name

OBJECTIVES: dict[type[DefenceConfig], type[DefenceObjective]] = {
    PGDTrainingConfig: PGDTraining,
    FastFGSMConfig: FastFGSMTraining,
    TRADESConfig: TRADESTraining,
    NSLConfig: NSLAdversarialRegularization,
}
CONFIGS: dict[str, type[DefenceConfig]] = {config.name: config for config in OBJECTIVES}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def list_defences() -> list[str]:
    """Registry names of every defence, sorted."""
    return sorted(CONFIGS)


def defence_config_type(name: str) -> type[DefenceConfig]:
    """The config dataclass of defence ``name``; unknown name -> UserError with a suggestion."""
    if name not in CONFIGS:
        raise unknown_name("defence", name, CONFIGS)
    return CONFIGS[name]


def describe_defences() -> str:
    """Human-readable list of every defence with its settings and their defaults."""
    lines = []
    for name in list_defences():
        config_type = CONFIGS[name]
        lines.append(f"{name}: {config_type.summary}")
        for field in dataclasses.fields(config_type):
            default = field.default
            shown = "auto" if default is None and field.name == "step_size" else _show(default)
            lines.append(f"    {field.name}={shown}")
    return "\n".join(lines)


def make_defence(config: DefenceConfig) -> DefenceObjective:
    """The training objective of a typed defence config (library API, no strings)."""
    try:
        objective_type = OBJECTIVES[type(config)]
    except KeyError:
        raise TypeError(f"not a defence config: {type(config).__name__}") from None
    return objective_type(config)


def build_defence(
    name: str, options: Sequence[str] = ()
) -> tuple[DefenceObjective, dict[str, Any]]:
    """Parse and validate a defence from the command line.

    name: a registry name (see ``list_defences``). options: ``"key=value"`` strings; values are
    numbers (``0.1``, ``1e-3``, ``8/255``), ``true``/``false``, ``none``, or a norm
    (``l2``, ``linf``/``infinity``, ``l1``). Keys may use ``-`` for ``_``.
    Returns the objective and its JSON-able resolved settings (name + every setting).
    Raises UserError naming the defence and the field on any bad input.
    """
    config_type = defence_config_type(name)
    try:
        values = parse_options(config_type, options)
        config = config_type(**values)
    except UserError as error:
        raise UserError(f"defence '{name}': {error}") from None
    objective = make_defence(config)
    return objective, objective.settings()


def defence_from_dict(settings: Mapping[str, Any]) -> tuple[DefenceObjective, dict[str, Any]]:
    """Rebuild a defence from its stored settings (a run's config.json "defence" entry)."""
    settings = dict(settings)
    name = settings.pop("name", None)
    if not isinstance(name, str):
        raise UserError("defence settings have no 'name'")
    config_type = defence_config_type(name)
    known = {field.name for field in dataclasses.fields(config_type)}
    for key in settings:
        if key not in known:
            raise unknown_name(f"setting of defence '{name}'", key, known)
    try:
        config = config_type(**settings)
    except UserError as error:
        raise UserError(f"defence '{name}': {error}") from None
    objective = make_defence(config)
    return objective, objective.settings()


def parse_options(config_type: type[DefenceConfig], options: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> typed keyword arguments of ``config_type``."""
    hints = typing.get_type_hints(config_type)
    fields = {field.name for field in dataclasses.fields(config_type)}
    values: dict[str, Any] = {}
    for option in options:
        key, sep, text = option.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or not key:
            raise UserError(f"option '{option}' must look like key=value")
        if key not in fields:
            raise unknown_name("setting", key, fields)
        if key in values:
            raise UserError(f"setting '{key}' given twice")
        values[key] = _convert(key, text.strip(), hints[key])
    return values


def _convert(key: str, text: str, hint: Any) -> Any:
    """Convert one option's text to the field's type (the config then range-checks it)."""
    optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
    base = next((arg for arg in typing.get_args(hint) if arg is not type(None)), hint)
    lowered = text.lower()
    if optional and lowered in {"none", "null"}:
        return None
    if base is bool:
        if lowered in _TRUE | _FALSE:
            return lowered in _TRUE
        raise UserError(f"{key} must be true or false, got '{text}'")
    if base is int:
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{key} must be an integer, got '{text}'") from None
    if base is float:
        return _parse_number(key, text)
    return text


def _parse_number(key: str, text: str) -> float:
    """A float from ``0.1``, ``1e-3`` or a fraction such as ``8/255``."""
    try:
        if "/" in text:
            numerator, denominator = text.split("/", 1)
            return float(numerator) / float(denominator)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{key} must be a number or a fraction like 8/255, got '{text}'") from None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).lower() if value is None else str(value)
