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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", "autoattack", "--set", "queries=-1"], "autoattack.queries must be >= 1"),
        (["--attack", "apgd", "--set", "eot_samples=0"], "apgd.eot_samples must be >= 1"),
        (["--attack", "apgd-t", "--set", "top_k=4"], "apgd-t.top_k must be <= 3"),
        (["--attack", "fab", "--set", "top_k=9"], "fab.top_k must be <= 3"),
        (["--attack", "autoattack", "--set", "version=fast"], "autoattack.version"),
    ],
)
def test_bad_settings_exit_2_with_one_line(fake_run, capsys, args, message):  # noqa: F811
    assert _attack(fake_run, *args, "--eps", "0.02", "--steps", "2") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (fake_run.out / "attack.json").exists()
