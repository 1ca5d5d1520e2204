"""Attacks by name: ``get_attack('pgd', eps=8/255, steps=20)``, ``list_attacks()``.

Settings given as strings (command line ``--set steps=20``) are converted to each field's type
by ``settings_from_strings``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from robustlab.attacks.apgd import APGD, APGDL2
from robustlab.attacks.apgd_targeted import APGDTargeted, APGDTargetedL2
from robustlab.attacks.autoattack import AutoAttack
from robustlab.attacks.base import Attack
from robustlab.attacks.cw import CarliniWagnerL2
from robustlab.attacks.epsilon import parse_number
from robustlab.attacks.fab import FAB
from robustlab.attacks.fgsm import FGSM
from robustlab.attacks.filter import FilterAttack
from robustlab.attacks.iterative import IFGSM, MIFGSM, PGD, PGDL2
from robustlab.attacks.minimal import MinimalEps
from robustlab.attacks.noise import GaussianNoise, SignNoise
from robustlab.attacks.square import Square, SquareL2
from robustlab.errors import UserError, unknown_name

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        FGSM,
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
    if name not in ATTACKS:
        raise unknown_name("attack", name, ATTACKS)
    return ATTACKS[name]


def setting_names(name: str) -> list[str]:
    """The settings an attack accepts, in declaration order."""
    return [field.name for field in dataclasses.fields(attack_class(name))]


def get_attack(name: str, **settings: Any) -> Attack:
    """Build the attack ``name`` with ``settings`` (validated; errors name the field)."""
    cls = attack_class(name)
    allowed = setting_names(name)
    for key in settings:
        if key not in allowed:
            raise unknown_name(f"setting for attack '{name}'", key, allowed)
    return cls(**settings)


def settings_from_strings(name: str, raw: Mapping[str, str]) -> dict[str, Any]:
    """Convert ``{'steps': '20', 'eps': '8/255', 'seed': 'none'}`` to typed settings."""
    cls = attack_class(name)
    hints = typing.get_type_hints(cls)
    allowed = setting_names(name)
    out: dict[str, Any] = {}
    for key, text in raw.items():
        if key not in allowed:
            raise unknown_name(f"setting for attack '{name}'", key, allowed)
        out[key] = _convert(f"{name}.{key}", text, hints[key])
    return out


def _convert(field: str, text: str, hint: Any) -> Any:
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
