"""``--track``: TensorBoard events read back with tensorboard's own reader, MLflow runs with
``mlflow.search_runs``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustlab.cli import main
from robustlab.tracking import track_folder

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def _mlflow_runs(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["robustlab"], output_format="list")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 2-epoch simple-cnn on 120 8x8 digits, trained with --track tensorboard."""
    out = tmp_path_factory.mktemp("track") / "run"
    rc = main(["train", "--data", "digits", "--limit", "120", "--model", "simple-cnn",
               "--strategy", "scratch", "--epochs", "2", "--lr", "1e-3", "--out", str(out),
               "--track", "tensorboard"])
    assert rc == 0
    return out


def test_train_logs_epochs_to_tensorboard(trained):
    events = _events(trained / "tensorboard")
    scalars = events.Tags()["scalars"]
    assert {"train_loss", "val_accuracy"} <= set(scalars)
    history = json.loads((trained / "history.json").read_text())
    logged = [event.value for event in events.Scalars("train_loss")]
    assert logged == pytest.approx([epoch["train_loss"] for epoch in history])
    assert "settings/text_summary" in events.Tags()["tensors"]


def test_attack_logs_robust_accuracy_to_mlflow(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pgd"
    rc = main(["attack", str(trained), "--attack", "pgd", "--eps", "0,0.05,0.2", "--steps", "3",
               "--out", str(out), "--track", "mlflow"])
    assert rc == 0
    runs = _mlflow_runs((tmp_path / "mlruns").as_uri())
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["attack.name"] == "pgd"
    from mlflow import MlflowClient

    history = MlflowClient((tmp_path / "mlruns").as_uri()).get_metric_history(
        run.info.run_id, "robust_accuracy")
    result = json.loads((out / "attack.json").read_text())
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        result["robust_accuracy"])


def test_evaluate_logs_curves_flags_and_figures(trained, tmp_path):
    out = tmp_path / "fgsm"
    rc = main(["evaluate", str(trained), "--attack", "fgsm", "--eps", "0.02,0.1", "--out", str(out),
               "--track", "tensorboard"])
    assert rc == 0
    events = _events(out / "tensorboard")
    curves = json.loads((out / "curves.json").read_text())
    white = next(c for c in curves["curves"] if c["kind"] == "white-box")
    logged = events.Scalars(f"robust_accuracy/{white['label']}")
    assert [e.value for e in logged] == pytest.approx(white["accuracy"])
    assert events.Scalars("sanity_flags")[0].value == len(curves["flags"])
    assert any(tag.startswith("curves") for tag in events.Tags()["images"])


def test_study_folder_results_and_figures(tmp_path):
    """A study's results.json, config.yaml and figures, logged to a user-given MLflow URI."""
    (tmp_path / "config.yaml").write_text("name: tiny\n")
    (tmp_path / "results.json").write_text(json.dumps(
        {"models": {"cnn": {"test_accuracy": 0.75}},
         "curves": {"flags": [{"code": "curve-rises", "severity": "warning", "message": "m"}]}}))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "figure.png")
    uri = (tmp_path / "store").as_uri()
    logged = track_folder("mlflow", tmp_path, "run tiny", uri)
    assert logged == ["results.json", "config.yaml"]
    run = _mlflow_runs(uri)[0]
    assert run.data.metrics["results/models.cnn.test_accuracy"] == 0.75
    assert run.data.metrics["sanity_flags"] == 1
    from mlflow import MlflowClient

    artifacts = MlflowClient(uri).list_artifacts(run.info.run_id, "figures")
    assert [Path(a.path).name for a in artifacts] == ["figure.png"]


def test_bad_tracking_uri_is_refused_before_any_work(trained, tmp_path, capsys):
    out = tmp_path / "pgd"
    rc = main(["attack", str(trained), "--attack", "fgsm", "--eps", "0.1", "--out", str(out),
               "--track", "mlflow", "--track-uri", "nosuch://x"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustlab: error: --track mlflow") and "\n" not in err
    assert not out.exists()


def test_untracked_command_writes_no_events(trained):
    before = sorted(trained.glob("tensorboard/*"))
    assert main(["evaluate", str(trained)]) == 0
    assert sorted(trained.glob("tensorboard/*")) == before


def _metric_history(uri: str, run_id: str, key: str) -> list:
    from mlflow import MlflowClient

    return sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.step)


TRAIN = ["train", "--data", "digits", "--limit", "120", "--model", "simple-cnn", "--strategy",
         "scratch", "--epochs", "3", "--lr", "1e-3", "--track", "mlflow"]


def test_train_logs_each_epoch_as_it_ends(tmp_path, monkeypatch):
    """The command fails after the last epoch, before history.json exists: every epoch's
    point is in MLflow all the same, so it was logged when its epoch ended."""
    from robustlab.errors import UserError
    from robustlab.training import recipe

    def broken(*args, **kwargs):
        raise UserError("scoring failed")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(recipe, "accuracy", broken)
    uri = (tmp_path / "mlruns").as_uri()  # given: mlflow.set_tracking_uri sets the environment
    assert main([*TRAIN, "--out", str(tmp_path / "run"), "--track-uri", uri]) == 2
    assert not (tmp_path / "run" / "history.json").exists()
    [run] = _mlflow_runs(uri)
    assert run.info.status == "FAILED"
    points = _metric_history(uri, run.info.run_id, "train_loss")
    assert [point.step for point in points] == [1, 2, 3]


def test_train_epochs_logged_live_are_not_logged_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    uri = (tmp_path / "mlruns").as_uri()
    assert main([*TRAIN, "--out", str(out), "--track-uri", uri]) == 0
    [run] = _mlflow_runs(uri)  # one run holds the live epochs and the finished run's files
    assert run.info.status == "FINISHED"
    history = json.loads((out / "history.json").read_text())
    for key in ("train_loss", "val_accuracy"):
        points = _metric_history(uri, run.info.run_id, key)
        assert [p.step for p in points] == [epoch["epoch"] for epoch in history]
        assert [p.value for p in points] == pytest.approx([epoch[key] for epoch in history])
    assert run.data.metrics["final.test_accuracy"] == pytest.approx(
        json.loads((out / "config.json").read_text())["metrics"]["test_accuracy"])
    assert run.data.params["train.epochs"] == "3"


TINY_STUDY = [
    "data.name=digits", "data.task=null", "data.image_size=16", "data.channels=3",
    "data.limit=120", "transfer=null", "example.indices=[0]",
    'models=[{name: a, arch: simple-cnn, strategy: scratch, epochs: 2},'
    ' {name: b, arch: simple-cnn, strategy: scratch, epochs: 1, seed: 1}]',
    "surrogate=a", "target=b",
    'curves=[{name: fgsm, attack: {name: fgsm}, eps: [0.05], limit: 16, examples: 0,'
    ' sanity: false}]',
]


def test_run_logs_each_step_as_it_finishes(tmp_path, monkeypatch):
    """A study that fails at its report has its finished steps and training epochs in MLflow
    (logged live); run again, it resumes, and its new MLflow run holds every step's numbers
    once."""
    import robustlab.reporting
    from robustlab.errors import UserError

    def broken(*args, **kwargs):
        raise UserError("cannot write the report")

    monkeypatch.chdir(tmp_path)
    uri = (tmp_path / "mlruns").as_uri()
    args = ["run", "leaf", "--out", str(tmp_path / "study"), "--track", "mlflow", "--track-uri", uri,
            *[arg for item in TINY_STUDY for arg in ("--set", item)]]
    with monkeypatch.context() as patch:
        patch.setattr(robustlab.reporting, "render_report", broken)
        assert main(args) == 2
    [failed] = _mlflow_runs(uri)
    assert failed.info.status == "FAILED"
    for step, key in (("train-a", "test_accuracy"), ("attack-fgsm", "clean_accuracy")):
        assert f"results/steps.{step}.{key}" in failed.data.metrics
    assert "results/timings.train-b.seconds" in failed.data.metrics
    # and each training epoch of the study as it ended
    points = _metric_history(uri, failed.info.run_id, "train-a/train_loss")
    assert [point.step for point in points] == [1, 2]

    assert main(args) == 0
    resumed = next(r for r in _mlflow_runs(uri) if r.info.run_id != failed.info.run_id)
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    key = "results/steps.train-b.test_accuracy"
    assert [p.value for p in _metric_history(uri, resumed.info.run_id, key)] == [
        results["steps"]["train-b"]["test_accuracy"]]
