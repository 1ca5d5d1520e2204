"""Registry, settings from strings and epsilon parsing."""

from __future__ import annotations

import json
import math

import pytest

from robustlab.attacks import (
    Attack,
    get_attack,
    list_attacks,
    parse_eps,
    parse_eps_list,
    setting_names,
    settings_from_strings,
)
from robustlab.errors import UserError


def test_registry_lists_every_attack():
    names = list_attacks()
    expected = {"fgsm", "fgm", "ifgsm", "pgd", "pgd-l2", "mifgsm", "filter", "cw-l2", "minimal"}
    evaluation = {
        "apgd",
        "apgd-l2",
        "apgd-t",
        "apgd-t-l2",
        "square",
        "square-l2",
        "fab",
        "autoattack",
    }
    assert expected | {"sign-noise", "gaussian-noise"} | evaluation == set(names)
    for name in names:
        attack = get_attack(name)
        assert isinstance(attack, Attack) and attack.name == name
        assert attack.norm in ("linf", "l2", "none")
        json.dumps(attack.settings())  # JSON-able (inf becomes Infinity, io writes null)
        recorded = list(attack.settings())  # quiet settings at their default are left out
        assert recorded == [key for key in setting_names(name) if key in recorded]


def test_unknown_attack_suggests_a_close_name():
    with pytest.raises(UserError, match="did you mean 'pgd'"):
        get_attack("pdg")
    with pytest.raises(UserError, match="unknown attack 'zzz'"):
        get_attack("zzz")


def test_unknown_setting_is_named():
    with pytest.raises(UserError, match=r"'stepz'.*did you mean 'steps'"):
        get_attack("pgd", stepz=3)
    with pytest.raises(UserError, match="'steps'"):
        get_attack("fgsm", steps=3)


def test_settings_from_strings_converts_types():
    settings = settings_from_strings(
        "pgd", {"eps": "8/255", "steps": "20", "random_start": "false", "rel_stepsize": "none"}
    )
    assert settings == {"eps": 8 / 255, "steps": 20, "random_start": False, "rel_stepsize": None}
    attack = get_attack("pgd", **settings)
    assert attack.steps == 20 and attack.random_start is False
    assert settings_from_strings("fgsm", {"loss": "mse", "seed": "None"}) == {
        "loss": "mse",
        "seed": None,
    }
    for raw, message in [
        ({"steps": "2.5"}, r"pgd\.steps must be an integer"),
        ({"random_start": "maybe"}, r"pgd\.random_start"),
        ({"eps": "abc"}, r"pgd\.eps"),
        ({"nope": "1"}, "nope"),
    ]:
        with pytest.raises(UserError, match=message):
            settings_from_strings("pgd", raw)


def test_with_eps_keeps_other_settings():
    attack = get_attack("pgd", steps=7, seed=3).with_eps(0.1)
    assert (attack.eps, attack.steps, attack.seed) == (0.1, 7, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8/255", 8 / 255), ("0.03", 0.03), (" 0 ", 0.0), ("1", 1.0), (0.5, 0.5)],
)
def test_parse_eps(text, expected):
    assert parse_eps(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-0.1", ">= 0"),
        ("1.5", "<= 1"),
        ("nan", "NaN"),
        ("abc", "number"),
        ("1/0", "number"),
        ("8/255/2", "number"),
    ],
)
def test_parse_eps_errors(text, message):
    with pytest.raises(UserError, match=message):
        parse_eps(text)


def test_parse_eps_list_forms():
    assert parse_eps_list("0.01,0.02") == [0.01, 0.02]
    assert parse_eps_list("0.01:0.05:5") == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])
    assert parse_eps_list("0:8/255:3") == pytest.approx([0, 4 / 255, 8 / 255])
    assert parse_eps_list("8/255") == pytest.approx([8 / 255])
    assert parse_eps_list("2.5", high=math.inf) == [2.5]
    for bad, message in [
        ("", "empty"),
        ("0.1,0.1", "twice"),
        ("0.1:0.2", "start:stop:count"),
        ("0.1:0.2:x", "integer"),
        ("0.1:0.2:0", ">= 1"),
        ("0.2:0.1:3", "start <= stop"),
        ("0.1,2", "<= 1"),
        ("0.1,-1", ">= 0"),
        ("0.1,nan", "NaN"),
    ]:
        with pytest.raises(UserError, match=message):
            parse_eps_list(bad)
