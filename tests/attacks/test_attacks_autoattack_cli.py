"""``robustlab attack --attack autoattack``: per-member accounting and the evaluation grade."""

from __future__ import annotations

import json

import pytest
from test_attacks_cli import _attack, fake_run  # noqa: F401  (fixture)

FAST = ["--set", "steps=3", "--set", "queries=10", "--set", "top_k=2"]


def test_autoattack_records_robust_accuracy_after_each_member(fake_run):  # noqa: F811
    assert _attack(fake_run, "--attack", "autoattack", "--eps", "0.02,0.05", *FAST) == 0
    record = json.loads((fake_run.out / "attack.json").read_text())
    evaluation = record["evaluation"]
    assert evaluation["grade"] == "autoattack" and not evaluation["standard_autoattack"]
    stages = evaluation["robust_after"]
    assert [row["attack"] for row in stages] == ["APGD-CE", "APGD-T", "FAB-T", "Square"]
    for k in range(len(record["epsilons"])):
        after = [row["robust_accuracy"][k] for row in stages]
        assert after == sorted(after, reverse=True)  # the cascade only removes points
        assert after[0] <= record["clean_accuracy"]
        assert after[-1] == pytest.approx(record["robust_accuracy"][k])
    assert evaluation["attacks"][0]["name"] == "APGD-CE"


def test_single_attacks_are_graded_as_upper_bounds(fake_run):  # noqa: F811
    assert _attack(fake_run, "--attack", "pgd", "--eps", "0.02", "--steps", "2") == 0
    evaluation = json.loads((fake_run.out / "attack.json").read_text())["evaluation"]
    assert evaluation["grade"] == "white-box" and evaluation["robust_after"] is None
    assert "--attack autoattack" in evaluation["statement"]
