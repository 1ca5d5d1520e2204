"""Defence registry: names -> typed configs -> objectives, and the ``key=value`` front end.

``build_defence("pgd", ["eps=8/255", "steps=7"])`` is what ``robustlab train --defence pgd
--defence-opt eps=8/255 --defence-opt steps=7`` calls: it builds a ``DefenceSpec``, so every
option is parsed (by the attack registry's one converter) and validated here, before any data
is loaded or any run directory exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from robustlab.attacks.spec import validated
from robustlab.defences.config import DefenceConfig
from robustlab.defences.objectives import OBJECTIVES, DefenceObjective
from robustlab.defences.spec import DefenceSpec, typed_settings
from robustlab.errors import UserError, lookup

CONFIGS: dict[str, type[DefenceConfig]] = {config.name: config for config in OBJECTIVES}


def list_defences() -> list[str]:
    """Registry names of every defence, sorted."""
    return sorted(CONFIGS)


def defence_config_type(name: str) -> type[DefenceConfig]:
    """The config dataclass of defence ``name``; unknown name -> UserError with a suggestion."""
    return lookup("defence", name, CONFIGS)


def describe_defences() -> str:
    """Human-readable list of every defence with its settings and their resolved defaults."""
    lines = []
    for name in list_defences():
        config_type = CONFIGS[name]
        lines.append(f"{name}: {config_type.summary}")
        defaults = config_type().resolved()
        for field in dataclasses.fields(config_type):
            lines.append(f"    {field.name}={_show(getattr(defaults, field.name))}")
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
    (``l2``, ``linf``/``infinity``). Keys may use ``-`` for ``_``.
    Returns the objective and its JSON-able resolved settings (name + every setting).
    Raises UserError naming the defence and the field on any bad input.
    """
    defence_config_type(name)
    return defence_from_dict({"name": name, **_split_options(name, options)})


def defence_from_dict(settings: Mapping[str, Any]) -> tuple[DefenceObjective, dict[str, Any]]:
    """Rebuild a defence from its stored settings (a run's config.json "defence" entry)."""
    settings = dict(settings)
    name = settings.pop("name", None)
    if not isinstance(name, str):
        raise UserError("defence settings have no 'name'")
    return validated(DefenceSpec, {"name": name, "settings": settings}).build()


def parse_options(config_type: type[DefenceConfig], options: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> typed keyword arguments of ``config_type``."""
    return typed_settings(config_type.name, _split_options(config_type.name, options))


def _split_options(name: str, options: Sequence[str]) -> dict[str, str]:
    """``["key=value", ...]`` -> ``{key: text}``; keys lower-cased, ``-`` read as ``_``."""
    values: dict[str, str] = {}
    for option in options:
        key, sep, text = option.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or not key:
            raise UserError(f"defence '{name}': option '{option}' must look like key=value")
        if key in values:
            raise UserError(f"defence '{name}': setting '{key}' given twice")
        values[key] = text.strip()
    return values


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).lower() if value is None else str(value)
