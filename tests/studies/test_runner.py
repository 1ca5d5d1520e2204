"""The resumable step runner, with fake steps (no training, no data)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from robustlab.errors import UserError
from robustlab.io import write_json
from robustlab.studies.runner import (
    PRIOR_SECONDS_PER_UNIT,
    CostModel,
    Step,
    StepContext,
    Work,
    first_difference,
    format_seconds,
    prepare_run_dir,
    run_steps,
    step_seed,
)

CONFIG = {"study": "fake", "seed": 0, "models": [{"name": "a", "epochs": 2}]}


class Recorder:
    """Fake steps that log their calls; ``fail_at`` makes one step raise once."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_at = fail_at

    def step(self, name: str, expected: float = 1.0) -> Step:
        def run(ctx: StepContext) -> dict:
            self.calls.append(name)
            if name == self.fail_at:
                self.fail_at = None
                raise RuntimeError(f"killed in {name}")
            write_json(ctx.dir / "out.json", {"name": name})
            previous = sum(r["value"] for r in ctx.results.values())
            # a random draw: equal across runs only if the step's seed is
            return {"value": previous + 1, "draw": torch.rand(1).item(), "seed": ctx.seed}

        return Step(name, f"fake {name}", run, expected)

    def steps(self) -> list[Step]:
        return [self.step(name) for name in ("one", "two", "three")]


def test_steps_run_in_order_and_pass_results_on(tmp_path):
    recorder = Recorder()
    prepare_run_dir(tmp_path / "run", CONFIG)
    outcome = run_steps(tmp_path / "run", recorder.steps(), seed=0)
    assert recorder.calls == ["one", "two", "three"]
    assert [outcome["steps"][n]["value"] for n in ("one", "two", "three")] == [1, 2, 4]
    for name in ("one", "two", "three"):
        marker = json.loads((tmp_path / "run" / name / "done.json").read_text())
        assert marker["result"] == outcome["steps"][name]
        assert marker["seconds"] >= 0 and marker["peak_rss_mb"] > 0
        assert (tmp_path / "run" / name / "out.json").exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"] == CONFIG
    assert (tmp_path / "run" / "config.yaml").read_text().startswith("study: fake")


def test_rerun_of_a_finished_run_runs_nothing(tmp_path):
    first = Recorder()
    prepare_run_dir(tmp_path, CONFIG)
    before = run_steps(tmp_path, first.steps())
    again = Recorder()
    prepare_run_dir(tmp_path, CONFIG)
    after = run_steps(tmp_path, again.steps())
    assert again.calls == []
    assert after["steps"] == before["steps"]


def test_interrupted_run_resumes_at_the_failed_step_with_identical_results(tmp_path):
    prepare_run_dir(tmp_path / "clean", CONFIG)
    clean = run_steps(tmp_path / "clean", Recorder().steps(), seed=3)

    broken = Recorder(fail_at="two")
    prepare_run_dir(tmp_path / "broken", CONFIG)
    with pytest.raises(RuntimeError, match="killed in two"):
        run_steps(tmp_path / "broken", broken.steps(), seed=3)
    assert not (tmp_path / "broken" / "two" / "done.json").exists()
    torch.manual_seed(1234)  # a different global RNG state must not matter
    resumed = run_steps(tmp_path / "broken", broken.steps(), seed=3)
    assert broken.calls == ["one", "two", "two", "three"]
    assert resumed["steps"] == clean["steps"]


def test_step_seeds_depend_on_config_seed_and_step_name():
    assert step_seed(0, "train-a") == step_seed(0, "train-a")
    assert step_seed(0, "train-a") != step_seed(0, "train-b")
    assert step_seed(0, "train-a") != step_seed(1, "train-a")


def test_changed_config_is_refused_with_the_first_difference(tmp_path):
    prepare_run_dir(tmp_path, CONFIG)
    changed = {**CONFIG, "models": [{"name": "a", "epochs": 3}]}
    with pytest.raises(UserError, match=r"models\[0\]\.epochs: 2 -> 3.*--out.*--restart"):
        prepare_run_dir(tmp_path, changed)


def test_restart_discards_the_old_run(tmp_path):
    prepare_run_dir(tmp_path / "run", CONFIG)
    run_steps(tmp_path / "run", Recorder().steps())
    changed = {**CONFIG, "seed": 1}
    prepare_run_dir(tmp_path / "run", changed, restart=True)
    assert not (tmp_path / "run" / "one").exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"] == changed


def test_a_folder_that_is_no_study_run_is_never_used_or_deleted(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        prepare_run_dir(tmp_path, CONFIG, restart=True)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    write_json(tmp_path / "other" / "config.json", {"format": "robustlab-run"})
    with pytest.raises(UserError, match="not a robustlab study run"):
        prepare_run_dir(tmp_path / "other", CONFIG, restart=True)


def test_corrupt_done_marker_is_a_user_error(tmp_path):
    prepare_run_dir(tmp_path, CONFIG)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "done.json").write_text("{not json")
    with pytest.raises(UserError, match="done-marker of step 'one'"):
        run_steps(tmp_path, Recorder().steps())


def test_unrecorded_step_runs_every_time_and_sees_timings(tmp_path):
    seen = []

    def report(ctx: StepContext) -> dict:
        seen.append(sorted(ctx.timings))
        return {"ok": True}

    steps = [*Recorder().steps(), Step("report", "report", report, record=False)]
    prepare_run_dir(tmp_path, CONFIG)
    run_steps(tmp_path, steps)
    run_steps(tmp_path, steps)
    assert seen == [["one", "three", "two"]] * 2
    assert not (tmp_path / "report").exists()


def test_progress_lines_count_steps_and_estimate_time_left(tmp_path, caplog):
    recorder = Recorder()
    steps = [recorder.step("one", 10.0), recorder.step("two", 50.0)]
    prepare_run_dir(tmp_path, CONFIG)
    with caplog.at_level(logging.INFO, logger="robustlab.studies.runner"):
        run_steps(tmp_path, steps)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "[1/2] fake one ... (about 1m 00s left)"
    assert any(line.startswith("[2/2] fake two ... (about ") for line in lines)
    # the second estimate is calibrated by how fast the first step really was (~0 s)
    assert "[2/2] fake two ... (about 50s left)" not in lines


def test_estimates_use_the_rate_measured_on_steps_of_the_same_kind():
    costs = CostModel()
    train = Step("b", "b", lambda ctx: {}, work=Work("train cnn", 4.0))
    attack = Step("c", "c", lambda ctx: {}, work=Work("attack cnn", 100.0))
    plain = Step("d", "d", lambda ctx: {}, expected_seconds=7.0)
    assert costs.estimate(train) == pytest.approx(4.0 * PRIOR_SECONDS_PER_UNIT["train"])
    assert costs.estimate(plain) == 7.0
    # a train step of 10 units took 5 s where 2 s were guessed: 0.5 s a unit from now on
    costs.add({"kind": "train cnn", "units": 10.0}, 5.0, guessed=2.0)
    assert costs.estimate(train) == pytest.approx(2.0)
    # kinds not measured yet keep their guess, scaled by how far off the guesses were so far
    assert costs.estimate(attack) == pytest.approx(100.0 * PRIOR_SECONDS_PER_UNIT["attack"] * 2.5)
    assert costs.estimate(plain) == pytest.approx(7.0 * 2.5)


def test_a_resumed_run_estimates_from_the_costs_its_markers_recorded(tmp_path, caplog):
    steps = [
        Step(name, name, lambda ctx: {"ok": True}, work=Work("train cnn", units))
        for name, units in (("one", 10.0), ("two", 4.0))
    ]
    prepare_run_dir(tmp_path, CONFIG)
    run_steps(tmp_path, steps)
    marker = json.loads((tmp_path / "one" / "done.json").read_text())
    assert marker["work"] == {"kind": "train cnn", "units": 10.0}
    write_json(tmp_path / "one" / "done.json", {**marker, "seconds": 50.0})  # as if slow
    (tmp_path / "two" / "done.json").unlink()
    with caplog.at_level(logging.INFO, logger="robustlab.studies.runner"):
        run_steps(tmp_path, steps)
    assert "[2/2] two ... (about 20s left)" in [r.getMessage() for r in caplog.records]


def test_first_difference_and_format_seconds():
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == "a.b[1]: 2 -> 3"
    assert first_difference({"a": 1}, {"a": 1, "c": 2}) == "c: '<unset>' -> 2"
    assert format_seconds(5) == "5s"
    assert format_seconds(125) == "2m 05s"
    assert format_seconds(3725) == "1h 02m"
