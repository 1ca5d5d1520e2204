"""``robustlab run``: listing presets, showing the config, one-line errors before anything runs."""

from __future__ import annotations

import pytest
import yaml

from robustlab.cli import main


def test_list_shows_every_preset(capsys):
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("leaf", "layer-transfer", "targeted-face", "adversarial-regularisation"):
        assert name in out


def test_show_config_prints_the_resolved_yaml_with_overrides(capsys):
    assert main(["run", "leaf", "--show-config", "--set", "models.frozen.epochs=7"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["study"] == "leaf" and config["models"][0]["epochs"] == 7
    assert config["models"][0]["batch_size"] == 32  # defaults are filled in


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["leef"], "unknown study preset 'leef' (did you mean 'leaf'?)"),
        (
            ["leaf", "--set", "models.frozen.epochz=2"],
            "leaf.yaml: unknown key 'epochz' in models[0] (did you mean 'epochs'?)",
        ),
        (["leaf", "--set", "data.name=no/such/folder"], "data path not found"),
        (["leaf", "--set", "models.0.arch=resnet5O"], "unknown architecture 'resnet5O'"),
        (
            ["leaf", "--set", "curves.0.attack.name=fgsn"],
            "unknown attack 'fgsn' (did you mean 'fgsm'?)",
        ),
        ([], "name a study preset or YAML file"),
    ],
)
def test_bad_input_is_one_line_and_nothing_is_written(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *args, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1 and error.startswith("robustlab: error: ")
    assert not out.exists()


def test_typo_in_a_user_file_is_reported_with_its_name(tmp_path, capsys):
    path = tmp_path / "my_study.yaml"
    values = yaml.safe_load(_preset("leaf").read_text())
    values["curves"][0]["epz"] = [0.1]
    path.write_text(yaml.safe_dump(values))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert (
        "my_study.yaml: unknown key 'epz' in curves[0] (did you mean 'eps'?)"
        in capsys.readouterr().err
    )


def _preset(name: str):
    from robustlab.studies.study import PRESETS_DIR

    return PRESETS_DIR / f"{name}.yaml"
