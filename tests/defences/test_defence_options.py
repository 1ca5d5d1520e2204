"""``build_defence``: parsing key=value options, validation before training, the CLI's errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from robustlab import defences
from robustlab.cli import main
from robustlab.errors import UserError


def test_list_defences_names_every_defence():
    assert defences.list_defences() == ["fast-fgsm", "nsl", "pgd", "trades"]
    text = defences.describe_defences()
    for name in defences.list_defences():
        assert f"{name}:" in text


@pytest.mark.parametrize("name", defences.list_defences())
def test_defaults_build_and_store_every_setting_as_json(name):
    objective, settings = defences.build_defence(name, [])
    assert isinstance(objective, defences.DefenceObjective)
    assert settings["name"] == name
    fields = {field.name for field in dataclasses.fields(defences.defence_config_type(name))}
    assert set(settings) == fields | {"name"}
    assert json.loads(json.dumps(settings)) == settings
    assert settings.get("step_size", 0) is not None  # derived defaults are resolved


def test_values_are_parsed_by_field_type():
    options = "eps=8/255 steps=7 step-size=0.01 norm=L2 random_start=false warmup_epochs=2"
    _, settings = defences.build_defence("pgd", options.split())
    assert settings == {
        "name": "pgd",
        "eps": 8 / 255,
        "steps": 7,
        "step_size": 0.01,
        "norm": "l2",
        "random_start": False,
        "warmup_epochs": 2,
        "attack": "pgd",
    }
    _, nsl = defences.build_defence(
        "nsl", ["adv_grad_norm=infinity", "pgd_epsilon=0.1", "clip_value_max=1", "random_init=yes"]
    )
    assert (
        nsl["adv_grad_norm"] == "linf" and nsl["pgd_epsilon"] == 0.1 and nsl["random_init"] is True
    )
    assert nsl["clip_value_max"] == 1.0 and nsl["clip_value_min"] is None


def test_stored_settings_rebuild_the_same_defence():
    _, settings = defences.build_defence("trades", ["beta=3", "eps=0.1"])
    objective, again = defences.defence_from_dict(settings)
    assert again == settings
    assert objective.config.beta == 3.0


def test_typed_config_and_strings_agree():
    objective = defences.make_defence(defences.PGDTrainingConfig(eps=0.1, steps=5))
    _, settings = defences.build_defence("pgd", ["eps=0.1", "steps=5"])
    assert objective.settings() == settings


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("pgd", ["eps=-1"], "eps must be >= 0"),
        ("pgd", ["eps=2"], "eps must be <= 1"),
        ("pgd", ["steps=0"], "steps must be >= 1"),
        ("pgd", ["steps=2.5"], "steps must be an integer"),
        ("pgd", ["norm=l3"], "unknown norm 'l3'"),
        ("pgd", ["eps=abc"], "eps must be a number"),
        ("pgd", ["eps=1/0"], "eps must be a number"),
        ("pgd", ["eps=nan"], "eps must be a number"),
        ("pgd", ["epsilon=0.1"], "did you mean 'eps'?"),
        ("pgd", ["eps"], "must look like key=value"),
        ("pgd", ["eps=0.1", "eps=0.2"], "given twice"),
        ("pgd", ["random_start=maybe"], "random_start must be true or false"),
        ("nsl", ["multiplier=-0.2"], "multiplier must be >= 0"),
        ("nsl", ["pgd_iterations=0"], "pgd_iterations must be an integer >= 1"),
        ("nsl", ["pgd_epsilon=-0.1"], "pgd_epsilon must be >= 0"),
        ("nsl", ["adv_step_size=-1"], "adv_step_size must be >= 0"),
        ("nsl", ["random_init=true"], "random_init needs pgd_epsilon"),
        ("nsl", ["clip_value_min=1", "clip_value_max=0"], "clip_value_min"),
        ("nsl", ["adv_grad_norm=l1"], "unknown adv_grad_norm 'l1'"),
        ("trades", ["beta=-1"], "beta must be >= 0"),
        ("fast-fgsm", ["warmup_epochs=-1"], "warmup_epochs must be an integer >= 0"),
    ],
)
def test_bad_options_raise_one_line_naming_the_field(name, options, message):
    with pytest.raises(UserError) as error:
        defences.build_defence(name, options)
    text = str(error.value)
    assert message in text and f"defence '{name}'" in text and "\n" not in text


def test_unknown_defence_suggests_the_closest_name():
    with pytest.raises(UserError, match=r"unknown defence 'pdg' \(did you mean 'pgd'\?\)"):
        defences.build_defence("pdg", [])


def test_library_configs_validate_too():
    with pytest.raises(UserError, match="eps must be >= 0"):
        defences.PGDTrainingConfig(eps=-0.1)
    with pytest.raises(UserError, match="steps must be an integer"):
        defences.PGDTrainingConfig(steps=True)


@pytest.mark.parametrize(
    ("defence", "options", "message"),
    [("pgd", ["eps=-1"], "eps must be >= 0"), ("tradez", [], "did you mean 'trades'")],
)
def test_cli_rejects_a_bad_defence_before_training(defence, options, message, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        "digits",
        "--model",
        "small-cnn",
        "--out",
        str(out),
        "--defence",
        defence,
    ]
    for option in options:
        argv += ["--defence-opt", option]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not out.exists()
