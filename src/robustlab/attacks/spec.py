"""``AttackSpec``: an attack as data (registry name + settings), the form study files and
defences use; ``spec.build(eps)`` is the registry's attack.

The spec restates no setting: its keys are checked against the attack class's fields, string
values (``eps: 8/255`` in YAML, ``--defence-opt``) go through the registry's one converter, and
ranges and defaults are the attack class's own (a spec is validated by building it once).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from robustlab.attacks.base import LOSSES, Attack
from robustlab.errors import UserError

SpecT = TypeVar("SpecT", bound=BaseModel)

# The attack settings that ``robustlab attack`` / ``evaluate`` offer as flags (any other one:
# ``--set KEY=VALUE``), with their help text. Their type, default and choices are the attack
# classes' own fields (``setting_choices``, ``setting_defaults``); the CLI generates the flags.
FLAG_SETTINGS: dict[str, str] = {
    "steps": "iterations of an iterative attack",
    "loss": "the loss the attack ascends",
    "seed": "seed of the attack's random start and noise ('none': the global RNG)",
}


class AttackSpec(BaseModel):
    """An attack of ``robustlab.attacks`` by registry name, with its settings.

    ``settings`` leaves out what is not given (the attack's defaults apply) and may leave out
    ``eps`` when the caller supplies it (``build(eps=...)``, a sweep). ``label`` names it in
    curves and tables (default: the name).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    settings: dict[str, Any] = Field(default_factory=dict)
    label: str = ""

    @model_validator(mode="before")
    @classmethod
    def _typed_settings(cls, values: Any) -> Any:
        """Text values become the field's type through the registry's one converter."""
        if isinstance(values, dict) and isinstance(values.get("settings"), dict):
            from robustlab.attacks.registry import settings_from_strings

            name = values.get("name")
            if isinstance(name, str):
                values = {**values, "settings": settings_from_strings(name, values["settings"])}
        return values

    @model_validator(mode="after")
    def _buildable(self) -> AttackSpec:
        self.build()  # the attack class's own checks: a bad name or value is one UserError
        return self

    @property
    def display(self) -> str:
        """How curves and tables name this attack."""
        return self.label or self.name

    def build(self, eps: float | None = None, **overrides: Any) -> Attack:
        """The attack object; ``eps`` (when given) and ``overrides`` replace the settings."""
        from robustlab.attacks.registry import get_attack

        settings = {**self.settings, **overrides}
        if eps is not None:
            settings["eps"] = eps
        return get_attack(self.name, **settings)


def validated(cls: type[SpecT], values: dict[str, Any]) -> SpecT:
    """``cls.model_validate(values)``, a validation error raised as its one-line ``UserError``."""
    try:
        return cls.model_validate(values)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        cause = first.get("ctx", {}).get("error")
        if isinstance(cause, UserError):
            raise cause from None
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"{where}: {first['msg']}" if where else first["msg"]) from None


def _classes_with(setting: str) -> list[type[Attack]]:
    from robustlab.attacks.registry import ATTACKS

    return [cls for cls in ATTACKS.values() if setting in cls.__dataclass_fields__]


def setting_defaults(setting: str) -> list[Any]:
    """The distinct defaults the registry's attacks give ``setting``, in first-seen order."""
    defaults: list[Any] = []
    for cls in _classes_with(setting):
        default = cls.__dataclass_fields__[setting].default
        if default not in defaults:
            defaults.append(default)
    return defaults


def setting_choices(setting: str) -> tuple[str, ...]:
    """The values ``setting`` may take in some attack of the registry (``loss``: the union of
    the attacks' ``losses``, in ``LOSSES`` order); ``()`` when it takes any value of its type."""
    if setting != "loss":
        return ()
    allowed = {loss for cls in _classes_with(setting) for loss in cls.losses}
    return tuple(loss for loss in LOSSES if loss in allowed)
