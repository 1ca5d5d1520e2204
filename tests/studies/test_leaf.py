"""The leaf study end to end on a tiny digits version: results, report, kill -9 and resume."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustlab.cli import main
from robustlab.studies import load_study, resolve_data

# The leaf preset shrunk to seconds: 120 digits at 16 px, 1-2 epochs, 16 attacked images, and
# two of its curves (the source's figure, and MI-FGSM transfer from two surrogates).
CURVES = [
    {
        "name": "ifgsm-mse",
        "attack": {
            "name": "ifgsm",
            "settings": {"steps": 1, "loss": "mse"},
            "label": "FGSM (T=1, squared error)",
        },
        "eps": [0.01, 0.05],
        "limit": 16,
        "examples": 1,
    },
    {
        "name": "mifgsm",
        "attack": {"name": "mifgsm", "settings": {"steps": 2}, "label": "MI-FGSM (2 steps)"},
        "eps": [0.03],
        "surrogates": ["finetune", "simple-cnn"],
        "limit": 16,
        "noise": False,
        "examples": 0,
        "sanity": False,
    },
]
TINY = [
    "data.name=digits",
    "data.task=null",
    "data.image_size=16",
    "data.channels=3",
    "data.limit=120",
    "models.*.epochs=1",
    "models.finetune.epochs=2",
    "models.finetune-top3.epochs=2",
    f"curves={json.dumps(CURVES)}",
    "transfer.limit=16",
]


def run_args(out: Path) -> list[str]:
    return ["run", "leaf", "--out", str(out), *[arg for item in TINY for arg in ("--set", item)]]


def comparable(results: dict) -> dict:
    """results.json without timings (the only part allowed to differ between runs)."""
    return {key: value for key, value in results.items() if key != "timings"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("leaf") / "run"
    assert main(run_args(out)) == 0
    return out


@pytest.mark.slow
def test_tiny_leaf_study_writes_every_output(finished):
    results = json.loads((finished / "results.json").read_text())
    steps = results["steps"]
    assert set(steps) >= {
        "data",
        "train-frozen",
        "train-finetune",
        "train-simple-cnn",
        "attack-ifgsm-mse",
        "attack-mifgsm",
        "shape-check",
        "examples",
        "transfer-matrix",
    }
    assert steps["data"]["sizes"]["test"] == 18
    mse = steps["attack-ifgsm-mse"]
    assert [c["kind"] for c in mse["curves"]] == ["white-box", "black-box", "noise"]
    assert mse["curves"][1]["source"] == "simple-cnn" and mse["target"] == "finetune-top3"
    # white-box accuracy can only fall below clean accuracy; the source's shape is evaluated
    assert all(a <= mse["clean_accuracy"] + 1e-9 for a in mse["curves"][0]["accuracy"])
    shape = steps["shape-check"]
    assert shape["eps"] == 0.01 and isinstance(shape["black_below_noise"], bool)
    matrix = steps["transfer-matrix"]
    assert matrix["models"] == ["frozen", "finetune", "simple-cnn", "finetune-top3"]
    mifgsm = steps["attack-mifgsm"]
    assert [c["source"] for c in mifgsm["curves"]] == ["finetune-top3", "finetune", "simple-cnn"]
    assert len(matrix["accuracy"]) == 4 and all(len(row) == 4 for row in matrix["accuracy"])
    for step in steps:
        assert (finished / step / "done.json").exists()
    assert (finished / "config.yaml").exists() and (finished / "config.json").exists()
    assert (finished / "examples" / "image0003_triptych.png").stat().st_size > 1000
    html = (finished / "report.html").read_text()
    for title in (
        "What this study does",
        "Does the source",
        "Robustness: MI-FGSM (2 steps) on finetune-top3",
        "Transfer matrix",
        "Run details",
    ):
        assert title in html
    assert "missing figure" not in html


@pytest.mark.slow
def test_rerun_of_a_finished_study_skips_every_step(finished, caplog):
    before = json.loads((finished / "results.json").read_text())
    with caplog.at_level(logging.INFO, logger="robustlab.studies.runner"):
        assert main(run_args(finished)) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert any("train finetune: done (recorded)" in line for line in lines)
    assert not any(line.endswith("left)") for line in lines if "report" not in line)
    after = json.loads((finished / "results.json").read_text())
    assert after == before


@pytest.mark.slow
def test_changed_config_is_refused_before_anything_runs(finished, capsys):
    assert main([*run_args(finished), "--set", "models.frozen.lr=0.5"]) == 2
    error = capsys.readouterr().err
    assert "different config (models[0].lr: 0.001 -> 0.5)" in error and "--restart" in error


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_results(finished, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "robustlab", *run_args(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / "train-finetune" / "train_state.pt"  # written after each finished epoch
    deadline = time.monotonic() + 900  # generous: a loaded machine is slow, never flaky
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()
    # the kill can land at any moment after the first epoch, even after the study finished
    assert process.returncode in (0, -signal.SIGKILL), process.stderr.read().decode()
    assert (out / "train-frozen" / "done.json").exists()
    mid_finetune = state.exists() and not (out / "train-finetune" / "done.json").exists()

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "train frozen: done (recorded)" in resumed.stderr
    if mid_finetune:
        assert re.search(r"resuming after epoch \d", resumed.stderr)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # stale writes removed
    first = json.loads((finished / "results.json").read_text())
    second = json.loads((out / "results.json").read_text())
    assert comparable(second) == comparable(first)


def test_missing_leaf_data_falls_back_to_digits_in_one_line(tmp_path, caplog):
    study = load_study("leaf")
    with caplog.at_level(logging.WARNING):
        resolved = resolve_data(study, tmp_path)  # an empty data dir
    assert resolved.config.data.name == "digits"
    assert resolved.config.fallback_data is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "plantvillage-tomato" in warnings[0] and "digits" in warnings[0]
    assert resolved.config.notes == warnings


def test_present_data_is_used_as_configured(data_dir):
    study = load_study("leaf")
    assert resolve_data(study, data_dir).config == study.config
