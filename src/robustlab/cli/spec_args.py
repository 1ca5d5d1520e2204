"""Command-line options generated from the specs: flag, default, choices and help come from
the spec's fields (``robustlab.specs``), so a setting is defined once, in its spec.

A flag is the field's name with dashes (``batch_size`` -> ``--batch-size``) except where
``FLAGS`` says otherwise (spellings the README and scripts use). Values stay strings until
``spec_from_args`` converts them with the one converter (``specs.from_text``) and builds the
spec, which validates them: errors name the flag or the field, one line.

Works for any spec class (data, model, training). An attack's settings are the fields of its
class in the registry, so the attack flags (``--steps``, ``--loss``, ``--seed``) are generated
from those fields by ``add_attack_setting_options``. Specs import torch, so groups are added when a command's parser is first used
(``defer``): ``robustlab --help`` stays instant.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection, Mapping
from typing import Any

from robustlab.errors import UserError

# (spec class name, field) -> flag, where the flag is not the field's name
FLAGS: Mapping[tuple[str, str], str] = {
    ("DataSpec", "name"): "--data",
    ("DataSpec", "seed"): "--split-seed",
    ("ModelSpec", "arch"): "--model",
}
# ModelSpec fields no command line sets: the data fixes them (FROM_DATA) or, for mean/std,
# their length must match channels that are known only once the data is read
MODEL_CLI_EXCLUDE = ("num_classes", "in_chans", "input_size", "mean", "std")


def flag_of(cls: type, field: str) -> str:
    return FLAGS.get((cls.__name__, field), "--" + field.replace("_", "-"))


def dest_of(cls: type, field: str) -> str:
    """The ``args`` attribute of a field's flag (``--split-seed`` -> ``split_seed``)."""
    return flag_of(cls, field)[2:].replace("-", "_")


def defer(parser: argparse.ArgumentParser, add: Callable[[argparse.ArgumentParser], Any]) -> None:
    """Run ``add(parser)`` when the parser is first used (at once for a plain parser)."""
    later = getattr(parser, "defer", None)
    if callable(later):
        later(add)
    else:
        add(parser)


def add_spec_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    fields: Collection[str] | None = None,
    exclude: Collection[str] = (),
) -> None:
    """One option per field of spec ``cls`` (``fields``: only these; ``exclude``: not these)."""
    from robustlab.specs import spec_fields

    for name, info in spec_fields(cls).items():
        if (fields is None or name in fields) and name not in exclude:
            parser.add_argument(flag_of(cls, name), **option_settings(cls, name, info))


def add_attack_setting_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One option per ``attacks.spec.FLAG_SETTINGS`` entry (``--steps``, ``--loss``, ``--seed``):
    help text from there, default and choices from the attack classes' fields. Values stay
    strings (default None: the chosen attack's own) until ``attack_settings_from_args`` reads
    them with the attack registry's one converter, for the attack chosen."""
    from robustlab.attacks.spec import (
        FLAG_SETTINGS,
        AttackSpec,
        setting_choices,
        setting_defaults,
    )

    for name, description in FLAG_SETTINGS.items():
        defaults = setting_defaults(name)
        shown = show(defaults[0]) if len(defaults) == 1 else "the attack's own"
        settings: dict[str, Any] = {"dest": dest_of(AttackSpec, name), "default": None}
        choices = setting_choices(name)
        if choices:
            settings["metavar"] = "{" + ",".join(choices) + "}"
        settings["help"] = f"{description} (default: {shown})".replace("%", "%%")
        parser.add_argument(flag_of(AttackSpec, name), **settings)


def attack_settings_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The ``add_attack_setting_options`` values given, as text, by setting name."""
    from robustlab.attacks.spec import FLAG_SETTINGS, AttackSpec

    given = {name: getattr(args, dest_of(AttackSpec, name)) for name in FLAG_SETTINGS}
    return {name: value for name, value in given.items() if value is not None}


def option_settings(cls: type, name: str, info: Any) -> dict[str, Any]:
    """``add_argument`` keywords of one spec field: default, choices (as metavar), help."""
    from robustlab.specs import choices_of, default_of, unwrap_optional

    default = default_of(info)
    settings: dict[str, Any] = {"dest": dest_of(cls, name)}
    if default is ...:
        settings["required"] = True
    else:
        settings["default"] = default
    shown = "" if default is ... else f" (default: {show(default)})"
    if unwrap_optional(info.annotation)[0] is bool:
        settings["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        shown = ""  # BooleanOptionalAction adds its own default
    choices = choices_of(info.annotation)
    if choices:
        settings["metavar"] = "{" + ",".join(map(str, choices)) + "}"
    settings["help"] = (info.description or "").replace("%", "%%") + shown
    return settings


def show(value: Any) -> str:
    """A default as the user would type it."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "none"
    return str(value)


def spec_from_args(
    args: argparse.Namespace,
    cls: type,
    *,
    fields: Collection[str] | None = None,
    exclude: Collection[str] = (),
    **fixed: Any,
) -> Any:
    """Spec ``cls`` from the options ``add_spec_options`` added with the same ``fields`` /
    ``exclude`` (other fields keep their defaults; ``fixed``: values given by the command)."""
    from robustlab.specs import from_text, spec_fields

    values: dict[str, Any] = {}
    for name, info in spec_fields(cls).items():
        dest = dest_of(cls, name)
        if (fields is not None and name not in fields) or name in exclude or name in fixed:
            continue
        value = getattr(args, dest)
        if isinstance(value, str):
            try:
                value = from_text(value, info.annotation)
            except UserError as error:
                raise UserError(f"{flag_of(cls, name)} {error}") from None
        values[name] = value
    return cls(**values, **fixed)
