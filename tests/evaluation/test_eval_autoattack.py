"""``robustlab evaluate --attack autoattack``: the evaluation grade in curves.json and the report."""

from __future__ import annotations

import json

import pytest

from robustlab.cli import main


def test_autoattack_evaluation_is_graded_and_shown_first(tmp_path, target_model, digits, make_run):
    run = make_run(tmp_path / "run", target_model, digits)
    argv = [
        "evaluate", str(run), "--attack", "autoattack", "--eps", "0.05,0.1", "--limit", "30",
        "--set", "steps=3", "--set", "queries=10", "--set", "top_k=2", "--no-unbounded-check",
    ]  # fmt: skip
    assert main(argv) == 0
    out = run / "robustness" / "autoattack"
    curves = json.loads((out / "curves.json").read_text())
    evaluation = curves["evaluation"]
    assert evaluation["grade"] == "autoattack" and evaluation["standard_autoattack"] is False
    after = evaluation["robust_after"]
    assert [row["attack"] for row in after] == ["APGD-CE", "APGD-T", "FAB-T", "Square"]
    white = curves["curves"][0]["accuracy"]
    assert after[-1]["robust_accuracy"] == pytest.approx(white)  # the cascade's end is the curve
    html = (out / "report.html").read_text()
    assert 'id="evaluation-grade"' in html
    assert html.index('id="evaluation-grade"') < html.index('id="robustness-autoattack"')
    assert "robust after" in html and "APGD-T" in html
