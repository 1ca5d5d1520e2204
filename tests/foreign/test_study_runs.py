"""Imported runs in a study: a model entry ``run: PATH`` is loaded instead of trained, and plays
the surrogate and target roles, in the curves and the transfer matrix, like a trained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import CLASSES, SIZE

from robustlab.cli import main

CURVES = {
    "name": "fgsm",
    "attack": {"name": "ifgsm", "settings": {"steps": 1, "loss": "ce"}},
    "eps": [0.05, 0.2],
    "limit": 16,
    "examples": 1,
}


def _study(path: Path, data: Path, models: list[dict], **extra) -> Path:
    """A tiny leaf study over ``models``: the first the surrogate, the second the target."""
    config = {
        "study": "leaf",
        "data": {"name": str(data)},
        "models": models,
        "surrogate": models[0]["name"],
        "target": models[1]["name"],
        "curves": [CURVES],
        "example": {"eps": 0.05, "indices": [0]},
        "transfer": {"attack": {"name": "fgsm"}, "eps": 0.1, "limit": 16},
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def imported(foreign) -> dict[str, Path]:
    """The same torch CNN imported twice: from its ONNX and from its TorchScript export."""
    runs = {"onnx": foreign.tmp / "runs/onnx", "torchscript": foreign.tmp / "runs/ts"}
    for path, out, extra in ((foreign.onnx, runs["onnx"], []),
                             (foreign.torchscript, runs["torchscript"], ["--input-size", str(SIZE)])):
        assert main(["import", str(path), "--out", str(out), "--data", str(foreign.data),
                     *extra]) == 0
    return runs


def test_imported_runs_are_surrogate_and_target(foreign, imported):
    models = [{"name": "onnx", "run": str(imported["onnx"])},
              {"name": "scripted", "run": str(imported["torchscript"])}]
    study = _study(foreign.tmp / "study.yaml", foreign.data, models)
    out = foreign.tmp / "study"
    assert main(["run", str(study), "--out", str(out)]) == 0

    results = json.loads((out / "results.json").read_text())["steps"]
    for name, run in (("onnx", imported["onnx"]), ("scripted", imported["torchscript"])):
        loaded = results[f"train-{name}"]
        assert loaded["run"] == str(run.resolve())
        assert loaded["arch"].startswith("foreign-")
        # the data set is labelled by the exported CNN itself
        assert loaded["test_accuracy"] == 1.0
        assert not (out / f"train-{name}" / "model.safetensors").exists()  # nothing trained
    curves = results["attack-fgsm"]
    assert curves["target"] == "scripted"
    by_kind = {curve["kind"]: curve for curve in curves["curves"]}
    assert by_kind["black-box"]["source"] == "onnx"
    # one network in two formats: its transfer attack is the white-box attack again
    white, black = by_kind["white-box"]["accuracy"], by_kind["black-box"]["accuracy"]
    assert white[-1] < curves["clean_accuracy"]
    assert black == pytest.approx(white, abs=1.5 / curves["n"])
    matrix = results["transfer-matrix"]
    assert matrix["models"] == ["onnx", "scripted"]
    assert matrix["accuracy"][0][1] == pytest.approx(matrix["accuracy"][0][0], abs=1.5 / 16)
    assert (out / "report.html").is_file()
    assert main(["run", str(study), "--out", str(out)]) == 0  # resumed: every step recorded


BAD_ENTRIES = [
    ({"run": "no/such/run"}, "run directory not found: no/such/run"),
    ({"run": "TMP"}, "is not a run directory"),
    ({"run": "RUN", "epochs": 3}, "remove epochs"),
    ({}, "missing key 'arch'"),
]


def test_bad_run_entries_are_one_line(foreign, imported, capsys):
    out = foreign.tmp / "bad-study"
    for entry, message in BAD_ENTRIES:
        where = {"RUN": str(imported["onnx"]), "TMP": str(foreign.tmp)}
        entry = {key: where.get(value, value) for key, value in entry.items()}
        models = [{"name": "bad", **entry}, {"name": "onnx", "run": str(imported["onnx"])}]
        study = _study(foreign.tmp / "bad.yaml", foreign.data, models)
        assert main(["run", str(study), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("robustlab: error: bad.yaml: models[0]") and "\n" not in err
        assert message in err, err
        assert not out.exists()


def test_a_run_with_other_classes_is_refused_before_attacks(foreign, imported, capsys):
    data = foreign.tmp / "renamed.npz"
    import numpy as np

    arrays = dict(np.load(foreign.data))
    arrays["class_names"] = np.array([name.upper() for name in CLASSES])
    np.savez(data, **arrays)
    models = [{"name": "onnx", "run": str(imported["onnx"])},
              {"name": "scripted", "run": str(imported["torchscript"])}]
    study = _study(foreign.tmp / "study.yaml", data, models)
    assert main(["run", str(study), "--out", str(foreign.tmp / "study")]) == 2
    err = capsys.readouterr().err.strip()
    assert "model 'onnx'" in err and "classes" in err and "\n" not in err
