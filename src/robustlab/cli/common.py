"""Argument groups shared by several commands, and their conversion to typed specs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustlab.cli.spec_args import MODEL_CLI_EXCLUDE, add_spec_options, defer, spec_from_args
from robustlab.errors import UserError

if TYPE_CHECKING:
    from robustlab.data import DataSpec
    from robustlab.models import ModelSpec


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


def add_attack_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--attack``, ``--eps``, ``--steps``, ``--set KEY=VALUE`` and ``--seed``: one attack of the
    registry and its settings (``evaluate``, ``attack``); the attack itself checks them."""
    parser.add_argument(
        "--attack", help="attack name: fgsm, ifgsm, pgd, pgd-l2, mifgsm, apgd, autoattack, ..."
    )
    parser.add_argument(
        "--eps", help="[0, 1] pixel units: 8/255, a list 0.01,0.02 or a range 0.01:0.05:5"
    )
    parser.add_argument("--steps", type=int, help="iterations of an iterative attack")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other attack setting, e.g. --set restarts=5 --set loss=dlr",
    )
    parser.add_argument("--seed", type=int, default=0, help="attack and noise seed (0)")


def attack_from_args(args: argparse.Namespace, **overrides: object) -> tuple[Any, list[float]]:
    """The attack of ``add_attack_options`` (at the largest epsilon) and its epsilons, in the
    order given; ``overrides``: settings set by other flags (None: not set). No I/O."""
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
    raw: dict[str, str] = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        raw[key.strip()] = value
    settings = settings_from_strings(args.attack, raw)
    epsilons = parse_eps_list(args.eps, field="--eps", high=cls.eps_high)
    settings.update(eps=max(epsilons), seed=args.seed)
    flags = {"steps": args.steps, **overrides}
    settings.update({key: value for key, value in flags.items() if value is not None})
    return get_attack(args.attack, **settings), epsilons


def add_device_option(parser: argparse.ArgumentParser, where: str = "where the model runs") -> None:
    """``--device``, default ``auto`` (CUDA when there is one, else the CPU) for every command."""
    parser.add_argument(
        "--device", default="auto", help=f"{where}: auto (CUDA if any, else cpu), cpu, cuda:1, ..."
    )
