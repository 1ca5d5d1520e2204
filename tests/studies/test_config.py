"""Study configs: presets validate, bad input is ONE clear error before anything runs."""

from __future__ import annotations

import pytest
import yaml

from robustlab.errors import UserError
from robustlab.studies import apply_overrides, list_presets, load_study
from robustlab.studies.config import parse_override, to_plain
from robustlab.studies.study import PRESETS_DIR

PRESETS = sorted(list_presets())


def preset_values(name: str) -> dict:
    return yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text())


def write_study(tmp_path, values: dict, name: str = "my_study.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def test_every_preset_validates_and_has_a_title():
    assert {"leaf", "layer-transfer", "targeted-face", "adversarial-regularisation"} <= set(PRESETS)
    for name in PRESETS:
        study = load_study(name)
        assert study.name == name and study.config.title
        assert to_plain(study.config)["study"] == study.config.study


def test_demo_is_an_alias_of_leaf():
    demo, leaf = load_study("demo"), load_study("leaf")
    assert demo.name == "leaf" and demo.config == leaf.config


def test_unknown_key_names_the_place_and_suggests_the_closest(tmp_path):
    values = preset_values("leaf")
    values["models"][0]["epochz"] = 3
    path = write_study(tmp_path, values, "leaf.yaml")
    with pytest.raises(UserError) as error:
        load_study(str(path))
    assert (
        str(error.value) == "leaf.yaml: unknown key 'epochz' in models[0] (did you mean 'epochs'?)"
    )


def test_unknown_top_level_key_and_wrong_type(tmp_path):
    values = preset_values("leaf")
    values["surogate"] = "frozen"
    with pytest.raises(UserError, match=r"unknown key 'surogate' \(did you mean 'surrogate'\?\)"):
        load_study(str(write_study(tmp_path, values)))
    values = preset_values("leaf")
    values["models"][1]["epochs"] = "many"
    with pytest.raises(UserError, match=r"my_study.yaml: models\[1\]\.epochs: .*integer.*'many'"):
        load_study(str(write_study(tmp_path, values)))


def test_missing_key_is_named(tmp_path):
    values = preset_values("leaf")
    del values["target"]
    with pytest.raises(UserError, match="missing key 'target'"):
        load_study(str(write_study(tmp_path, values)))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.name=plantvilage-tomato",
            r"data: unknown data set 'plantvilage-tomato' \(did you mean 'plantvillage-tomato'\?\)",
        ),
        ("data.task=unhealty", r"data: unknown task .*'unhealty' \(did you mean 'unhealthy'\?\)"),
        (
            "models.frozen.arch=tf_efficientnet_lite9",
            r"models\[0\]: unknown architecture 'tf_efficientnet_lite9' \(did you mean",
        ),
        (
            "curves.pgd.attack.name=pgdd",
            r"curves\[2\]\.attack: unknown attack 'pgdd' \(did you mean 'pgd'\?\)",
        ),
        ("curves.pgd.attack.settings.stepz=3", r"curves\[2\]\.attack: .*stepz"),
        ("target=finetun", r"target: unknown model 'finetun' \(did you mean 'finetune'\?\)"),
        ("curves.0.eps=[0.03, 3]", r"curves\[0\]\.eps: eps must be in \[0, 1\] pixel units"),
        ("models.finetune.head_epochs=5", r"models\[1\]: head_epochs \(5\) must be < epochs"),
    ],
)
def test_bad_names_and_settings_are_caught_up_front(override, message):
    with pytest.raises(UserError, match=message) as error:
        load_study("leaf", [override])
    assert str(error.value).startswith("leaf.yaml: ")
    assert "\n" not in str(error.value)


def test_unknown_preset_and_missing_file():
    with pytest.raises(UserError, match=r"unknown study preset 'leef' \(did you mean 'leaf'\?\)"):
        load_study("leef")
    with pytest.raises(UserError, match=r"study file not found: nowhere/x\.yaml"):
        load_study("nowhere/x.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("study: leaf\nmodels: [\n  - a\n")
    with pytest.raises(UserError, match=r"broken.yaml: line \d+ invalid YAML"):
        load_study(str(path))
    path.write_text("- just\n- a list\n")
    with pytest.raises(UserError, match="must be a mapping"):
        load_study(str(path))
    path.write_text("study: leafy\n")
    with pytest.raises(UserError, match=r"unknown study 'leafy' \(did you mean 'leaf'\?\)"):
        load_study(str(path))


def test_user_yaml_file_runs_under_its_own_name(tmp_path):
    path = write_study(tmp_path, preset_values("leaf"), "my_study.yaml")
    study = load_study(str(path))
    assert study.name == "my_study" and study.config == load_study("leaf").config


def test_overrides_by_index_name_wildcard_and_yaml_values():
    values = {
        "data": {"limit": None},
        "models": [{"name": "a", "epochs": 5}, {"name": "b", "epochs": 5}],
    }
    out = apply_overrides(
        values,
        [
            "data.limit=300",
            "models.b.epochs=2",
            "models[0].lr=1e-3",
            "models.*.seed=7",
            "eps=[0.01, 8/255]",
            "new.key=x",
        ],
    )
    assert out["data"]["limit"] == 300
    assert [m["epochs"] for m in out["models"]] == [5, 2]
    assert out["models"][0]["lr"] == 1e-3
    assert [m["seed"] for m in out["models"]] == [7, 7]
    assert out["eps"] == [0.01, 8 / 255]
    assert out["new"] == {"key": "x"}
    assert values["data"]["limit"] is None  # the input is not modified


def test_bad_overrides_are_user_errors():
    values = {"models": [{"name": "a"}], "seed": 0}
    with pytest.raises(UserError, match=r"no item named 'b' in models; use an index or one of: a"):
        apply_overrides(values, ["models.b.epochs=2"])
    with pytest.raises(UserError, match=r"models has 1 items, no \[3\]"):
        apply_overrides(values, ["models.3.epochs=2"])
    with pytest.raises(UserError, match="cannot set 'x' inside a value"):
        apply_overrides(values, ["seed.x=1"])
    with pytest.raises(UserError, match=r"KEY\.SUB=VALUE"):
        parse_override("models.epochs")


def test_override_shrinks_a_preset_and_is_validated():
    study = load_study("leaf", ["data.limit=200", "models.*.epochs=2", "curves.*.eps=[0.03]"])
    assert study.config.data.limit == 200
    assert all(m.epochs == 2 for m in study.config.models)
    assert all(c.eps == [0.03] for c in study.config.curves)
    with pytest.raises(
        UserError, match=r"leaf.yaml: unknown key 'limt' in data \(did you mean 'limit'\?\)"
    ):
        load_study("leaf", ["data.limt=200"])


def test_targeted_face_refuses_a_beta_that_makes_descent_diverge():
    with pytest.raises(
        UserError, match=r"sweep.betas: beta 50 with lr 0.1 .* diverge; use beta < 20"
    ):
        load_study("targeted-face", ["sweep.betas=[0, 50]"])
