"""``robustlab evaluate`` and ``robustlab report`` end to end on run directories."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from robustlab.cli import main
from robustlab.data import DataSplits
from robustlab.models import ModelSpec, create_model


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory,
    target_model: nn.Module,
    surrogate_model: nn.Module,
    digits: DataSplits,
    make_run,
):
    root = tmp_path_factory.mktemp("runs")
    return {
        "target": make_run(root / "target", target_model, digits),
        "surrogate": make_run(root / "surrogate", surrogate_model, digits),
    }


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("robustlab: error:") and "\n" not in message, message
    return message


def test_clean_metrics_are_merged_into_metrics_json(runs, capsys) -> None:
    run = runs["target"]
    assert main(["evaluate", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["format"] == "robustlab-metrics" and list(metrics["splits"]) == ["test"]
    assert main(["evaluate", str(run), "--split", "all", "--batch-size", "64"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["splits"]) == ["test", "val", "train"]
    test = metrics["splits"]["test"]
    assert set(test) == {"n", "correct", "accuracy", "classes", "per_class", "confusion"}
    assert test["accuracy"] > 0.8 and len(test["confusion"]) == 10
    assert "test: accuracy" in capsys.readouterr().out


def test_robustness_command_writes_curves_records_examples_adversarials_and_report(runs) -> None:
    out = runs["target"] / "robustness" / "fgsm"
    argv = [
        "evaluate", str(runs["target"]), "--attack", "fgsm", "--eps", "0.05:0.15:3",
        "--surrogate", str(runs["surrogate"]), "--noise", "--limit", "60",
        "--examples", "2", "--save-adversarials", "8",
    ]  # fmt: skip
    assert main(argv) == 0
    curves = json.loads((out / "curves.json").read_text())
    assert [c["kind"] for c in curves["curves"]] == ["white-box", "black-box", "noise"]
    assert curves["epsilons"] == pytest.approx([0.05, 0.1, 0.15])
    assert curves["settings"]["surrogate_runs"] == {"surrogate": str(runs["surrogate"])}
    assert curves["models"]["target"]["arch"] == "simple-cnn"

    with open(out / "records.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60 * 3
    for row in rows:
        assert float(row["linf"]) <= float(row["eps"]) + 1e-5
        assert float(row["l2"]) >= float(row["linf"]) - 1e-5
        assert (row["attack_success"] == "True") == (
            row["clean_correct"] == "True" and row["adv_correct"] == "False"
        )
    white = curves["curves"][0]["accuracy"]
    by_eps = [sum(r["adv_correct"] == "True" for r in rows if float(r["eps"]) == e) / 60
              for e in curves["epsilons"]]  # fmt: skip
    assert by_eps == pytest.approx(white)

    summary = json.loads((out / "records_summary.json").read_text())
    assert [p["accuracy"] for p in summary["per_eps"]] == pytest.approx(white)
    examples = json.loads((out / "examples.json").read_text())["figures"]
    assert len(examples) == 4 and all((out / e["path"]).is_file() for e in examples)
    saved = json.loads((out / "adversarials" / "adversarials.json").read_text())
    assert saved["n"] == 8 and saved["eps"] == pytest.approx(0.15)
    assert saved["adversarial_png"] + saved["lost_by_quantisation"] >= saved["adversarial_float"]
    assert all((out / "adversarials" / image["png"]).is_file() for image in saved["images"])

    html = (out / "report.html").read_text()
    assert 'id="robustness-fgsm"' in html and 'id="flags"' in html
    assert html.count("<img") == 1 + len(examples)


def test_report_rebuilds_from_json_without_loading_models(runs, monkeypatch) -> None:
    import robustlab.models

    def refuse(*args, **kwargs):
        raise AssertionError("reporting must not load a model")

    monkeypatch.setattr(robustlab.models, "load_checkpoint", refuse)
    out = runs["target"] / "robustness" / "fgsm"
    if not (out / "curves.json").exists():
        pytest.skip("needs the robustness command's results")
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert 'id="robustness-fgsm"' in (out / "report.html").read_text()
    # The run directory's report gathers the run, its clean metrics and its robustness results.
    assert main(["report", str(runs["target"])]) == 0
    html = (runs["target"] / "report.html").read_text()
    assert 'id="run"' in html and 'id="robustness-fgsm"' in html


def test_transfer_matrix_command(runs, tmp_path: Path) -> None:
    out = tmp_path / "transfer"
    argv = [
        "evaluate", "--transfer", str(runs["target"]), str(runs["surrogate"]),
        "--attack", "pgd", "--eps", "0.1", "--steps", "3", "--limit", "40", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    matrix = json.loads((out / "transfer.json").read_text())
    assert matrix["models"] == ["target", "surrogate"] and matrix["n"] == 40
    accuracy = torch.tensor(matrix["accuracy"])
    assert accuracy.shape == (2, 2)
    for j, name in enumerate(matrix["models"]):
        assert accuracy[j, j] <= matrix["clean_accuracy"][name]
        assert accuracy[j, j] <= accuracy[:, j].min() + 0.05  # white-box is (nearly) the strongest
    assert (out / "transfer.png").is_file() and 'id="transfer"' in (out / "report.html").read_text()


def test_bad_input_gives_one_line_errors(
    runs, capsys, tmp_path: Path, digits: DataSplits, make_run, digits_spec
) -> None:
    target = str(runs["target"])
    assert "not a run directory" in _error(capsys, ["evaluate", str(tmp_path)])
    assert "--eps must not be empty" in _error(
        capsys, ["evaluate", target, "--attack", "fgsm", "--eps", ""]
    )
    assert "did you mean 'fgsm'" in _error(
        capsys, ["evaluate", target, "--attack", "fgsn", "--eps", "0.1"]
    )
    assert "need(s) --attack" in _error(capsys, ["evaluate", target, "--noise"])
    assert "at least 2 runs" in _error(
        capsys, ["evaluate", "--transfer", target, "--attack", "fgsm", "--eps", "0.1"]
    )
    assert "no results found" in _error(capsys, ["report", str(runs["surrogate"])])

    three = create_model(ModelSpec(arch="simple-cnn", num_classes=3, in_chans=1, input_size=8))
    subset = dataclasses.replace(digits_spec, classes=("0", "1", "2"))
    other = tmp_path / "three"
    make_run(other, three.eval(), digits, subset)
    config = json.loads((other / "config.json").read_text())
    config["classes"] = ["0", "1", "2"]
    (other / "config.json").write_text(json.dumps(config))
    message = _error(
        capsys, ["evaluate", target, "--attack", "fgsm", "--eps", "0.1", "--surrogate", str(other)]
    )
    assert "trained on classes ['0', '1', '2']" in message


def test_targeted_attack_shows_the_learned_filter(runs, tmp_path: Path, digits: DataSplits) -> None:
    out = tmp_path / "targeted"
    argv = [
        "evaluate", str(runs["target"]), "--attack", "pgd", "--eps", "0.3", "--steps", "5",
        "--target-class", "3", "--limit", "30", "--examples", "1", "--save-adversarials", "0",
        "--no-unbounded-check", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    curves = json.loads((out / "curves.json").read_text())
    assert curves["settings"]["targeted"] and curves["settings"]["target_class"] == "3"
    assert curves["n"] == int((digits.test.labels[:30] != 3).sum())  # class-3 images left out
    figures = [f["path"] for f in json.loads((out / "examples.json").read_text())["figures"]]
    assert any(path.endswith("_filter.png") for path in figures)
    assert not (out / "adversarials").exists()
