"""Argument groups shared by several commands, and their conversion to typed specs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustlab.cli.spec_args import (
    MODEL_CLI_EXCLUDE,
    add_attack_setting_options,
    add_spec_options,
    attack_settings_from_args,
    defer,
    spec_from_args,
)
from robustlab.errors import UserError

if TYPE_CHECKING:
    from robustlab.data import DataSpec
    from robustlab.models import ModelSpec


def add_command(subparsers: Any, name: str, summary: str, doc: str | None) -> Any:
    """Subcommand ``name``: ``summary`` in the command list; its ``--help`` shows ``doc`` (the
    command module's docstring) as written, so what a command does is described once."""
    return subparsers.add_parser(
        name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where data sets live (default: $ROBUSTLAB_DATA_DIR, else ~/.cache/robustlab/data)",
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """The ``data`` group: every ``DataSpec`` field (``--data``, ``--split``, ...) and --data-dir."""

    def add(parser: argparse.ArgumentParser) -> None:
        from robustlab.data import DataSpec

        group = parser.add_argument_group("data")
        add_spec_options(group, DataSpec)
        add_data_dir(group)

    defer(parser, add)


def data_spec_from(args: argparse.Namespace) -> DataSpec:
    from robustlab.data import DataSpec

    return spec_from_args(args, DataSpec)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The ``model`` group: the ``ModelSpec`` fields the data does not fix."""

    def add(parser: argparse.ArgumentParser) -> None:
        from robustlab.models import ModelSpec

        group = parser.add_argument_group("model")
        add_spec_options(group, ModelSpec, exclude=MODEL_CLI_EXCLUDE)

    defer(parser, add)


def model_spec_from(args: argparse.Namespace) -> ModelSpec:
    """The architecture; ``train_run`` fills the class count, channels and size from the data."""
    from robustlab.models import ModelSpec

    return spec_from_args(args, ModelSpec, exclude=MODEL_CLI_EXCLUDE)


def parse_floats(flag: str, text: str, count: int | None = None) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"{flag} must be comma-separated numbers, got '{text}'") from None
    if count is not None and len(values) != count:
        raise UserError(f"{flag} needs {count} numbers, got {len(values)} in '{text}'")
    return values


def show_progress() -> bool:
    """Progress bars only where a person is watching."""
    return sys.stderr.isatty()


def add_attack_options(
    parser: argparse.ArgumentParser, group: argparse._ArgumentGroup | None = None
) -> None:
    """``--attack``, ``--eps``, the setting flags generated from the attack classes' fields
    (``--steps``, ``--loss``, ``--seed``: ``spec_args.add_attack_setting_options``) and
    ``--set KEY=VALUE`` for any other setting, in ``group`` (default: ``parser``). The
    registry is read when the parser is first used (``defer``); the attack checks the values."""

    def add(_: argparse.ArgumentParser) -> None:
        from robustlab.attacks import list_attacks

        where = group or parser
        where.add_argument("--attack", metavar="NAME", help="one of: " + ", ".join(list_attacks()))
        where.add_argument(
            "--eps", help="[0, 1] pixel units: 8/255, a list 0.01,0.02 or a range 0.01:0.05:5"
        )
        add_attack_setting_options(where)
        where.add_argument(
            "--set",
            dest="settings",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="any other attack setting, e.g. --set restarts=5 --set eot_samples=4",
        )

    defer(parser, add)


def attack_from_args(args: argparse.Namespace) -> tuple[Any, list[float]]:
    """The attack of ``add_attack_options`` (at the largest epsilon) and its epsilons, in the
    order given. No I/O."""
    from robustlab.attacks import attack_class, get_attack, parse_eps_list, settings_from_strings

    if args.attack is None:
        raise UserError("--attack is required (e.g. --attack pgd)")
    cls = attack_class(args.attack)
    if cls.norm == "none":
        raise UserError(
            f"attack '{args.attack}' has no epsilon budget, so it has no robustness curve; use an "
            "eps-bounded attack, or run it from Python (robustlab.attacks.FilterAttack.optimise)"
        )
    if args.eps is None:
        raise UserError("--eps is required with --attack (e.g. --eps 8/255 or 0.01:0.05:5)")
    raw = attack_settings_from_args(args)
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        if key.strip() in raw:
            raise UserError(f"attack setting '{key.strip()}' is given twice (a flag and --set)")
        raw[key.strip()] = value
    settings = settings_from_strings(args.attack, raw)
    epsilons = parse_eps_list(args.eps, field="--eps", high=cls.eps_high)
    return get_attack(args.attack, **{**settings, "eps": max(epsilons)}), epsilons


def global_seed(attack: Any) -> int:
    """The seed of a command's global RNG while it attacks: the attack's (0 when the attack
    itself draws from the global RNG, ``seed=none``)."""
    return 0 if attack.seed is None else attack.seed


def add_device_option(parser: argparse.ArgumentParser, where: str = "where the model runs") -> None:
    """``--device``, default ``auto`` (CUDA when there is one, else the CPU) for every command."""
    parser.add_argument(
        "--device", default="auto", help=f"{where}: auto (CUDA if any, else cpu), cpu, cuda:1, ..."
    )
