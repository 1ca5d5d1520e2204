"""The specs contract: each setting's default and literal choices are written once, in its spec;
the CLI options and the study config blocks are generated from it."""

from __future__ import annotations

import argparse
import ast
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

from robustlab.attacks.base import LOSSES
from robustlab.attacks.spec import FLAG_SETTINGS, setting_choices, setting_defaults
from robustlab.cli import build_parser
from robustlab.cli.spec_args import (
    MODEL_CLI_EXCLUDE,
    add_spec_options,
    flag_of,
    show,
    spec_from_args,
)
from robustlab.data import DataSpec
from robustlab.errors import UserError
from robustlab.models import ModelSpec
from robustlab.models.classifier import FROM_DATA
from robustlab.specs import choices_of, default_of, from_text, spec, spec_fields
from robustlab.studies.config import DataConfig, ModelConfig
from robustlab.training import TrainSpec

SPECS = (DataSpec, ModelSpec, TrainSpec)
SRC = Path(__file__).resolve().parents[1] / "src" / "robustlab"
# (command, spec, fields) the CLI generates; None = every field
GENERATED = [
    (("train",), DataSpec, None),
    (("train",), ModelSpec, set(spec_fields(ModelSpec)) - set(MODEL_CLI_EXCLUDE)),
    (("train",), TrainSpec, None),
    (("import",), DataSpec, None),
    (("data", "info"), DataSpec, {"task", "seed"}),
    (("data", "prepare"), DataSpec, {"image_size", "on_corrupt"}),
]
# options of other commands that share a spec flag's name but are another setting
HOMONYMS = {
    ("attack", "--seed"): "the attack's seed",
    ("attack", "--batch-size"): "attack batch size",
    ("attack", "--limit"): "first N images of the attacked split",
    ("attack", "--split"): "which split to attack (a name)",
    ("evaluate", "--seed"): "the attack's seed",
    ("evaluate", "--batch-size"): "scoring batch size",
    ("evaluate", "--limit"): "first N images of the evaluated split",
    ("evaluate", "--split"): "which split to evaluate (a name)",
}


def subparser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser: Any = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser.complete()


def every_command() -> list[tuple[str, argparse.ArgumentParser]]:
    found = []

    def walk(parser: Any, path: str) -> None:
        parser.complete()
        found.append((path, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}".strip())

    walk(build_parser(), "")
    return found


@pytest.mark.parametrize(("path", "cls", "fields"), GENERATED)
def test_generated_options_carry_the_spec_default_choices_and_help(path, cls, fields) -> None:
    options = subparser(path)._option_string_actions
    for name, info in spec_fields(cls).items():
        if fields is not None and name not in fields:
            assert flag_of(cls, name) not in options or cls is not DataSpec or path == ("train",)
            continue
        action = options[flag_of(cls, name)]
        default = default_of(info)
        if default is ...:
            assert action.required
        else:
            assert action.default == default, name
            assert info.description and info.description in action.help.replace("%%", "%")
        choices = choices_of(info.annotation)
        if choices:
            assert action.metavar == "{" + ",".join(map(str, choices)) + "}"


def test_no_other_option_restates_a_spec_setting() -> None:
    spec_flags = {flag_of(cls, name) for cls in SPECS for name in spec_fields(cls)}
    generating = {" ".join(path) for path, _, _ in GENERATED}
    for command, parser in every_command():
        if command in generating:
            continue  # argparse refuses a second option of the same name there
        for flag in set(parser._option_string_actions) & spec_flags:
            assert (command, flag) in HOMONYMS, f"'{command} {flag}' restates a spec setting"


def _spec_literals() -> tuple[set[tuple[Any, ...]], set[str]]:
    """Every literal choice set of the specs, and the string defaults of literal fields."""
    choice_sets, words = set(), set()
    for cls in SPECS:
        for info in spec_fields(cls).values():
            inner = info.annotation
            if typing.get_origin(inner) is tuple:  # tuple[Literal[...], ...]
                inner = typing.get_args(inner)[0]
            choices = choices_of(inner)
            if choices and all(isinstance(choice, str) for choice in choices):
                choice_sets.add(tuple(choices))
                words |= {default_of(info)} - {None, ..., ()}
    return choice_sets, words


def _constants(path: Path) -> list[Any]:
    values = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Tuple | ast.List) and all(
            isinstance(item, ast.Constant) for item in node.elts
        ):
            values.append(tuple(item.value for item in node.elts))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            values.append(node.value)
    return values


def test_cli_and_study_sources_hold_no_spec_choices_or_defaults() -> None:
    choice_sets, words = _spec_literals()
    assert ("frozen", "finetune", "scratch") in choice_sets and "rmsprop" in words
    sources = [*sorted((SRC / "cli").glob("*.py")), SRC / "studies" / "config.py"]
    for source in sources:
        for value in _constants(source):
            assert value not in choice_sets, f"{source.name} restates the choices {value}"
            assert value not in words, f"{source.name} restates the default {value!r}"


@pytest.mark.parametrize("command", ["attack", "evaluate"])
def test_attack_flags_are_generated_from_the_attack_classes(command) -> None:
    options = subparser((command,))._option_string_actions
    for name, description in FLAG_SETTINGS.items():
        defaults = setting_defaults(name)
        assert defaults, f"{name} is no attack's setting"
        action = options["--" + name.replace("_", "-")]
        assert action.default is None  # unset: the chosen attack's own default applies
        shown = show(defaults[0]) if len(defaults) == 1 else "the attack's own"
        assert action.help.replace("%%", "%") == f"{description} (default: {shown})"
        choices = setting_choices(name)
        assert action.metavar == ("{" + ",".join(choices) + "}" if choices else None)
    assert setting_choices("loss") == LOSSES and setting_defaults("seed") == [0]


def test_cli_sources_write_no_attack_setting_flag_help_or_choice() -> None:
    texts = set(FLAG_SETTINGS.values())
    flags = {"--" + name.replace("_", "-") for name in FLAG_SETTINGS}
    for source in sorted((SRC / "cli").glob("*.py")):
        for value in _constants(source):
            assert value not in texts and value not in flags, f"{source.name} writes {value!r}"
            assert value != LOSSES, f"{source.name} restates the attack losses"


def test_study_blocks_have_exactly_the_spec_fields_and_defaults() -> None:
    data_fields = DataConfig.model_fields
    assert list(data_fields) == list(spec_fields(DataSpec))
    spec_part = {*(set(spec_fields(ModelSpec)) - set(FROM_DATA)), *spec_fields(TrainSpec)}
    assert spec_part <= set(ModelConfig.model_fields)  # plus block-only ones: name, defence...
    assert not set(FROM_DATA) & set(ModelConfig.model_fields)
    for cls, block in ((DataSpec, DataConfig), (ModelSpec, ModelConfig), (TrainSpec, ModelConfig)):
        for name, info in spec_fields(cls).items():
            # a study model may load a run folder (``run:``) instead of naming an architecture
            optional_in_block = block is ModelConfig and name == "arch"
            if name in block.model_fields and not optional_in_block:
                assert default_of(block.model_fields[name]) == default_of(info), name
    model = ModelConfig(name="m", arch="simple-cnn", strategy="scratch", epochs=3)
    assert model.model_spec() == ModelSpec("simple-cnn")  # num_classes unset until the data
    assert model.train_config() == TrainSpec(strategy="scratch", epochs=3)


@pytest.mark.parametrize(
    ("cls", "field", "text", "value"),
    [
        (DataSpec, "split", "0.6,0.2,0.2", (0.6, 0.2, 0.2)),
        (DataSpec, "split", "official", "official"),
        (DataSpec, "classes", "healthy,3", ("healthy", 3)),
        (DataSpec, "channels", "1", 1),
        (DataSpec, "limit", "none", None),
        (ModelSpec, "pretrained", "none", None),
        (TrainSpec, "lr", "1e-3", 1e-3),
        (TrainSpec, "lr", "1/1000", 1e-3),
        (TrainSpec, "augment", "crop,flip", ("crop", "flip")),
    ],
)
def test_one_converter_reads_every_field(cls, field, text, value) -> None:
    assert from_text(text, spec_fields(cls)[field].annotation) == value


def test_bad_command_line_values_name_the_flag(capsys) -> None:
    parser = argparse.ArgumentParser()
    add_spec_options(parser, TrainSpec)
    with pytest.raises(UserError, match=r"^--epochs must be a whole number, got 'ten'$"):
        spec_from_args(parser.parse_args(["--epochs", "ten"]), TrainSpec)
    with pytest.raises(UserError, match=r"train\.optimizer .*'adamw' \(did you mean 'adam'\?\)"):
        spec_from_args(parser.parse_args(["--optimizer", "adamw"]), TrainSpec)
    assert spec_from_args(parser.parse_args([]), TrainSpec) == TrainSpec()


def test_any_spec_plugs_into_the_generator() -> None:
    """A setting added to a spec reaches the command line with nothing else to change."""

    @spec("toy")
    class ToySpec:
        kind: Literal["a", "b"] = Field(default="a", description="which kind")
        steps: int = Field(default=5, ge=1, strict=True, description="iterations")
        scale: float = Field(default=0.5, gt=0, description="a scale")

    parser = argparse.ArgumentParser()
    add_spec_options(parser, ToySpec)
    assert "iterations (default: 5)" in parser.format_help()
    built = spec_from_args(parser.parse_args(["--kind", "b", "--scale", "8/255"]), ToySpec)
    assert (built.kind, built.steps, built.scale) == ("b", 5, pytest.approx(8 / 255))
    with pytest.raises(UserError, match=r"toy\.steps must be >= 1, got 0"):
        spec_from_args(parser.parse_args(["--steps", "0"]), ToySpec)
    assert show((0.7, 0.15, 0.15)) == "0.7,0.15,0.15" and show(None) == "none"


def test_a_model_spec_without_classes_is_checked_but_never_built() -> None:
    from robustlab.models import create_model
    from robustlab.models.factory import check_model_cost

    unset = ModelSpec("simple-cnn", input_size=32)  # what a study or the CLI holds before data
    check_model_cost(unset)  # the size checks run before the data is known
    with pytest.raises(UserError, match="num_classes is unset"):
        create_model(unset)
