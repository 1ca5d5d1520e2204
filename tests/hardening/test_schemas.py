"""Every result file robustlab reads is validated field by field; report reads only inside DIR."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_one_line_error, call_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from robustlab.errors import UserError
from robustlab.evaluation.records import RECORD_FIELDS, write_records_csv
from robustlab.io import write_json
from robustlab.reporting.results import build_report_spec
from robustlab.schemas import CurvesFile, validate_record

CURVES: dict[str, Any] = {
    "format": "robustlab-curves",
    "format_version": 1,
    "target": "model",
    "attack": {"name": "fgsm", "norm": "linf"},
    "epsilons": [0.0, 0.1],
    "n": 10,
    "clean_accuracy": 0.9,
    "curves": [
        {"label": "white-box", "kind": "white-box", "source": "model", "accuracy": [0.9, 0.2]}
    ],
    "models": {"model": {"role": "target", "clean_accuracy": 0.9}},
    "eps0_accuracy": 0.9,
    "unbounded_accuracy": None,
    "flags": [],
    "settings": {},
    "epsilons_255": [0.0, 25.5],
}


def _results(folder: Path, figure_path: str = "fig.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "curves.json", CURVES)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(folder / "fig.png")
    figures = [{"path": figure_path, "index": 0, "eps": 0.1, "caption": "x"}]
    write_json(
        folder / "examples.json",
        {"format": "robustlab-examples", "format_version": 1, "figures": figures},
    )
    return folder


def test_a_valid_results_folder_is_reported(tmp_path: Path) -> None:
    spec = build_report_spec(_results(tmp_path / "res"))
    assert any(figure.caption == "x" for section in spec.sections for figure in section.figures)


@pytest.mark.parametrize("figure", ["/etc/hostname", "../../x.png", "a/../../x.png"])
def test_report_refuses_figure_paths_outside_the_folder(figure: str, tmp_path, capsys) -> None:
    folder = _results(tmp_path / "res", figure)
    code, _, err = call_cli(["report", folder], capsys)
    assert_one_line_error(code, err, "examples.json", "path")
    assert not (folder / "report.html").exists()


def test_report_refuses_a_figure_linked_outside_the_folder(tmp_path, capsys) -> None:
    (tmp_path / "secret.png").write_bytes(b"secret")
    folder = _results(tmp_path / "res", "leak.png")
    (folder / "leak.png").symlink_to(tmp_path / "secret.png")
    code, _, err = call_cli(["report", folder], capsys)
    assert_one_line_error(code, err, "outside")
    assert not (folder / "report.html").exists()


def _mutations() -> st.SearchStrategy[tuple[str, Any]]:
    keys = sorted(key for key in CURVES if key not in ("format",))
    wrong = st.one_of(
        st.just("text"), st.just(["x", None]), st.just({"a": 1}), st.just(10**30), st.just(-1)
    )
    return st.one_of(
        st.tuples(
            st.just("drop"),
            st.sampled_from(
                sorted(key for key, field in CurvesFile.model_fields.items() if field.is_required())
            ),
        ),
        st.tuples(
            st.just("extra"), st.text(min_size=1, max_size=8).filter(lambda k: k not in CURVES)
        ),
        st.tuples(st.sampled_from(keys), wrong),
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutation=_mutations())
def test_a_damaged_curves_file_names_the_file_and_field(mutation, tmp_path: Path) -> None:
    action, value = mutation
    data = copy.deepcopy(CURVES)
    if action == "drop":
        del data[value]
        needle = value
    elif action == "extra":
        data[value] = 1
        needle = value if value.isprintable() else repr(value)[1:-1]
    else:
        if action == "target" and isinstance(value, str):
            return  # any name is a valid target
        if value == data[action] or (
            action in ("attack", "settings", "models") and isinstance(value, dict)
        ):
            return  # the mutation left a valid file
        data[action] = value
        needle = action
    with pytest.raises(UserError) as error:
        validate_record(json.loads(json.dumps(data)), CurvesFile, "res/curves.json")
    message = str(error.value)
    assert message.startswith("res/curves.json: ") and needle in message
    assert "\n" not in message


def test_a_damaged_curves_file_is_one_line_from_report(tmp_path, capsys) -> None:
    folder = _results(tmp_path / "res")
    data = {**CURVES, "curves": [{"label": "w", "kind": "white-box", "source": None}]}
    write_json(folder / "curves.json", data)
    code, _, err = call_cli(["report", folder], capsys)
    assert_one_line_error(code, err, "curves.json", "accuracy")


def test_run_config_fields_are_checked(untrained_run: Path, tmp_path, capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(untrained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["classes"] = {"not": "a list"}
    (run / "config.json").write_text(json.dumps(config))
    code, _, err = call_cli(["attack", run, "--attack", "fgsm", "--eps", "0.1",
                             "--out", tmp_path / "out"], capsys)  # fmt: skip
    assert_one_line_error(code, err, "config.json", "classes")


def test_undecodable_class_names_are_written_as_valid_utf8(tmp_path: Path) -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")  # what os.fsdecode gives for Latin-1
    row = dict.fromkeys(RECORD_FIELDS, 0) | {"true_class": name, "clean_class": name}
    path = write_records_csv(tmp_path / "records.csv", [row])
    text = path.read_bytes().decode("utf-8")  # strict: valid UTF-8
    assert "caf\\udce9" in text
    write_json(tmp_path / "x.json", {"classes": [name]})
    json.loads((tmp_path / "x.json").read_bytes().decode("utf-8"))
