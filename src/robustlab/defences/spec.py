"""``DefenceSpec``: a defence as data (registry name + settings), holding the ``AttackSpec``
that crafts its adversarial examples.

It is what study files write (``defence: {name: pgd, settings: {eps: 0.1, steps: 5}}``) and
what ``robustlab train --defence NAME --defence-opt KEY=VALUE`` builds. Text values go through
the attack registry's one converter; the defence's typed config checks its own settings and
the crafting attack checks the attack's (eps, steps, step sizes), so no range is written twice.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from robustlab.attacks import AttackSpec, convert_setting
from robustlab.attacks.registry import check_setting_names
from robustlab.defences.config import DefenceConfig
from robustlab.errors import UserError


class DefenceSpec(BaseModel):
    """An adversarial-training defence of ``robustlab.defences`` and its settings.

    ``attack`` is derived from the settings when the spec is built (it is not written to
    study files): the attack of ``robustlab.attacks`` that crafts the training examples.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    settings: dict[str, Any] = Field(default_factory=dict)
    attack: AttackSpec | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _derive_attack(cls, values: Any) -> Any:
        if not isinstance(values, dict) or not isinstance(values.get("name"), str):
            return values
        settings = typed_settings(values["name"], values.get("settings") or {})
        crafting = defence_config(values["name"], settings).crafting_spec()
        given = values.get("attack")
        if given is not None and AttackSpec.model_validate(given) != crafting:
            raise UserError(
                f"defence '{values['name']}': the crafting attack follows from the settings "
                "(e.g. settings.attack=apgd, settings.steps=10); do not give it separately"
            )
        return {**values, "settings": settings, "attack": crafting}

    def config(self) -> DefenceConfig:
        """The typed settings of this defence (``robustlab.defences.config``)."""
        return defence_config(self.name, self.settings)

    def build(self) -> tuple[Any, dict[str, Any]]:
        """The training objective and its resolved JSON-able settings (a run's "defence")."""
        from robustlab.defences.registry import make_defence

        objective = make_defence(self.config())
        return objective, objective.settings()


def defence_config(name: str, settings: dict[str, Any]) -> DefenceConfig:
    """The typed config of defence ``name``; errors are one line naming the defence."""
    from robustlab.defences.registry import defence_config_type

    config_type = defence_config_type(name)
    try:
        check_setting_names("setting", settings, _field_names(config_type))
        return config_type(**settings)
    except UserError as error:
        raise UserError(f"defence '{name}': {error}") from None


def typed_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with text values converted to their field's type (the one converter)."""
    from robustlab.defences.registry import defence_config_type

    config_type = defence_config_type(name)
    hints = typing.get_type_hints(config_type)
    out = {}
    for key, value in settings.items():
        if isinstance(value, str) and key in hints:
            try:
                value = convert_setting(key, value, hints[key])
            except UserError as error:
                raise UserError(f"defence '{name}': {error}") from None
        out[key] = value
    return out


def _field_names(config_type: type[DefenceConfig]) -> list[str]:
    return [field.name for field in dataclasses.fields(config_type)]
