"""Attacks by name: ``get_attack('pgd', eps=8/255, steps=20)``, ``list_attacks()``.

Settings given as strings (command line ``--set steps=20``) are converted to each field's type
by ``settings_from_strings``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from robustlab.attacks.apgd import APGD, APGDL2
from robustlab.attacks.apgd_targeted import APGDTargeted, APGDTargetedL2
from robustlab.attacks.autoattack import AutoAttack
from robustlab.attacks.base import Attack
from robustlab.attacks.cw import CarliniWagnerL2
from robustlab.attacks.epsilon import parse_number
from robustlab.attacks.fab import FAB
from robustlab.attacks.fgsm import FGM, FGSM
from robustlab.attacks.filter import FilterAttack
from robustlab.attacks.iterative import IFGSM, MIFGSM, PGD, PGDL2
from robustlab.attacks.minimal import MinimalEps
from robustlab.attacks.noise import GaussianNoise, SignNoise
from robustlab.attacks.square import Square, SquareL2
from robustlab.errors import UserError, lookup, unknown_name

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        FGSM,
        FGM,
        IFGSM,
        PGD,
        PGDL2,
        MIFGSM,
        FilterAttack,
        CarliniWagnerL2,
        MinimalEps,
        SignNoise,
        GaussianNoise,
        APGD,
        APGDL2,
        APGDTargeted,
        APGDTargetedL2,
        Square,
        SquareL2,
        FAB,
        AutoAttack,
    )
}


def list_attacks() -> list[str]:
    """Registered attack names, sorted."""
    return sorted(ATTACKS)


def attack_class(name: str) -> type[Attack]:
    """The class registered as ``name``; unknown names raise a ``UserError`` with a suggestion."""
    return lookup("attack", name, ATTACKS)


def setting_names(name: str) -> list[str]:
    """The settings an attack accepts, in declaration order."""
    return [field.name for field in dataclasses.fields(attack_class(name))]


def check_setting_names(kind: str, keys: Iterable[str], allowed: Iterable[str]) -> None:
    """Refuse a key that is not among ``allowed``: ``unknown KIND 'key' (did you mean ...)``."""
    allowed = list(allowed)
    for key in keys:
        if key not in allowed:
            raise unknown_name(kind, key, allowed)


def get_attack(name: str, **settings: Any) -> Attack:
    """Build the attack ``name`` with ``settings`` (validated; errors name the field)."""
    cls = attack_class(name)
    check_setting_names(f"setting for attack '{name}'", settings, setting_names(name))
    return cls(**settings)


def settings_from_strings(name: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Convert ``{'steps': '20', 'eps': '8/255', 'seed': 'none'}`` to typed settings.

    Values that are not strings are passed through (the attack's own checks judge them).
    """
    cls = attack_class(name)
    hints = typing.get_type_hints(cls)
    check_setting_names(f"setting for attack '{name}'", raw, setting_names(name))
    return {
        key: convert_setting(f"{name}.{key}", value, hints[key])
        if isinstance(value, str)
        else value
        for key, value in raw.items()
    }


def convert_setting(field: str, text: str, hint: Any) -> Any:
    """The one text-to-value converter of attack and defence settings (command line, YAML).

    ``text`` becomes the type of ``hint``: ``none``/``null`` for an optional setting, a bool
    (``true/yes/1/on``, ``false/no/0/off``), an int, a float (``0.1``, ``1e-3``, ``8/255``), else
    the text itself. Ranges are not checked here: the attack or defence class does that.
    """
    kinds = set(typing.get_args(hint)) or {hint}
    text = text.strip()
    if type(None) in kinds and text.lower() in ("none", "null"):
        return None
    if bool in kinds:
        lowered = text.lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise UserError(f"{field} must be true or false, got {text!r}")
    if int in kinds:
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{field} must be an integer, got {text!r}") from None
    if float in kinds:
        return parse_number(text, field)
    return text
