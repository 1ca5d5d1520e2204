"""Experiment tracking: ``--track tensorboard|mlflow`` logs what a command wrote.

A tracker is fed from the command's own result files once the command has succeeded (settings
from config.json / curves.json / attack.json / config.yaml, per-epoch loss and accuracy from
history.json, robust accuracy per epsilon, sanity flags, clean accuracy, and the PNG figures), so
what the tracking tool shows is exactly what the files hold, and a failed command logs nothing.

TensorBoard event files go to ``<output folder>/tensorboard``; MLflow runs go to the tracking URI
given (``--track-uri``, else ``$MLFLOW_TRACKING_URI``, else the file store ``./mlruns``), in the
experiment ``robustlab``. Both need the optional ``track`` extra.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from robustlab.errors import UserError

logger = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow")
EXPERIMENT = "robustlab"
MAX_FIGURES = 64  # a study folder can hold hundreds of example images
_PARAM_CHARS = 500


class Tracker:
    """What every tracking back end accepts."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        raise NotImplementedError

    def log_text(self, key: str, text: str) -> None:
        raise NotImplementedError

    def log_figure(self, path: Path, name: str) -> None:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        raise NotImplementedError


class LiveTracker(Tracker):
    """A tracker open while a command runs (per-epoch and per-step metrics as they come):
    what it logged live is not logged again from the finished command's result files.

    The back end is opened at the first log, so a command refused before any work leaves no
    event file and no MLflow run behind.
    """

    def __init__(self, opener: Callable[[], Tracker]) -> None:
        self.opener = opener
        self.opened: Tracker | None = None
        self.logged: set[tuple[str, int]] = set()

    @property
    def inner(self) -> Tracker:
        if self.opened is None:
            self.opened = self.opener()
        return self.opened

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.inner.log_params(params)

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        if (key, step) not in self.logged:
            self.logged.add((key, step))
            self.inner.log_metric(key, value, step)

    def log_text(self, key: str, text: str) -> None:
        self.inner.log_text(key, text)

    def log_figure(self, path: Path, name: str) -> None:
        self.inner.log_figure(path, name)

    def close(self, failed: bool = False) -> None:
        if self.opened is not None:
            self.opened.close(failed)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """One training epoch's history record, as the epoch ends."""
        log_epoch(self, record)

    def log_study_epoch(self, step: str, record: Mapping[str, Any]) -> None:
        """An epoch of a study's training step, as ``<step>/train_loss`` etc."""
        log_epoch(_Prefixed(self, f"{step}/"), record)

    def log_study_step(self, step: str, marker: Mapping[str, Any]) -> None:
        """A finished study step's numbers (its done-marker), under the keys that
        results.json gives them."""
        timing = {key: value for key, value in marker.items() if key != "result"}
        tree = {"steps": {step: marker.get("result")}, "timings": {step: timing}}
        for key, value in flatten(tree):
            if _is_number(value):
                self.log_metric(f"results/{key}", value)


class _Prefixed:
    """Metrics of ``tracker`` under ``prefix`` (what ``log_epoch`` needs of a tracker)."""

    def __init__(self, tracker: Tracker, prefix: str) -> None:
        self.tracker, self.prefix = tracker, prefix

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self.tracker.log_metric(self.prefix + key, value, step)


class TensorBoardTracker(Tracker):
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing_extra("tensorboard") from None
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_params(self, params: Mapping[str, Any]) -> None:
        rows = "\n".join(f"| {key} | {value} |" for key, value in params.items())
        self.writer.add_text("settings", f"| setting | value |\n|---|---|\n{rows}")

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self.writer.add_scalar(key, value, step)

    def log_text(self, key: str, text: str) -> None:
        self.writer.add_text(key, text)

    def log_figure(self, path: Path, name: str) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(name, pixels, dataformats="HWC")

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    def __init__(self, uri: str | None, run_name: str) -> None:
        self.client, self.uri, experiment_id = _mlflow_experiment(uri)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(_mlflow_key(k), str(v)[:_PARAM_CHARS]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self.client.log_metric(self.run_id, _mlflow_key(key), float(value), step=step)

    def log_text(self, key: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{_mlflow_key(key)}.txt")

    def log_figure(self, path: Path, name: str) -> None:
        folder = str(Path("figures") / Path(name).parent).rstrip("/.")
        self.client.log_artifact(self.run_id, str(path), folder or "figures")

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _mlflow_experiment(uri: str | None) -> tuple[Any, str, str]:
    """(client, uri, id of the 'robustlab' experiment), creating the experiment if needed."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise _missing_extra("mlflow") from None
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").as_uri()
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps its file store only behind this opt-in; it is the lean default here
        # (a database store would need SQLAlchemy).
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            EXPERIMENT)
    except Exception as error:  # MlflowException, connection errors, a bad URI
        first = (str(error).strip() or type(error).__name__).splitlines()[0][:200]
        raise UserError(f"--track mlflow: cannot open tracking URI {uri}: {first}") from None
    return client, uri, experiment_id


def check_tracker(kind: str, uri: str | None = None) -> None:
    """Fail before a command runs when its tracker cannot work (missing extra, bad URI)."""
    if kind == "mlflow":
        _mlflow_experiment(uri)
    elif kind == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise _missing_extra("tensorboard") from None


def _missing_extra(kind: str) -> UserError:
    return UserError(f"--track {kind} needs the 'track' extra: pip install 'robustlab[track]'")


def _mlflow_key(key: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", key)


def open_tracker(kind: str, folder: Path, run_name: str, uri: str | None = None) -> Tracker:
    """A tracker of ``kind`` for the command whose results are in ``folder``."""
    if kind == "tensorboard":
        return TensorBoardTracker(folder / "tensorboard")
    if kind == "mlflow":
        return MlflowTracker(uri, run_name)
    from robustlab.errors import unknown_name

    raise unknown_name("tracker", kind, TRACKERS)


def flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) pairs of nested dicts; lists stay leaves."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, tree


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def log_results(
    tracker: Tracker, folder: Path, *, only: tuple[str, ...] | None = None
) -> list[str]:
    """Log every result file robustlab writes that ``folder`` holds (or just ``only``, then
    without figures); returns their names."""
    logged = []
    for name, log in _LOGGERS.items():
        data = _read(folder / name) if only is None or name in only else None
        if data is not None:
            log(tracker, data)
            logged.append(name)
    if only is not None:
        return logged
    if (folder / "config.yaml").is_file():  # a study's resolved settings
        tracker.log_text("study_config", (folder / "config.yaml").read_text(encoding="utf-8"))
        logged.append("config.yaml")
    pngs = sorted(p for p in folder.rglob("*.png") if "tensorboard" not in p.parts)
    for path in pngs[:MAX_FIGURES]:
        tracker.log_figure(path, str(path.relative_to(folder).with_suffix("")))
    if len(pngs) > MAX_FIGURES:
        logger.info("tracking: logged %d of %d figures", MAX_FIGURES, len(pngs))
    return logged


def _log_run_config(tracker: Tracker, config: dict[str, Any]) -> None:
    settings = {k: v for k, v in config.items() if k not in ("metrics", "data_info")}
    tracker.log_params(dict(flatten(settings)))
    for key, value in flatten(config.get("metrics") or {}, "final"):
        if _is_number(value):
            tracker.log_metric(key, value)


def _log_history(tracker: Tracker, history: list[dict[str, Any]]) -> None:
    for number, epoch in enumerate(history, start=1):
        log_epoch(tracker, {"epoch": number, **epoch})


def log_epoch(tracker: Tracker | _Prefixed, record: Mapping[str, Any]) -> None:
    """An epoch's losses, accuracies and learning rate, at step = its epoch number."""
    for key, value in record.items():
        if key not in ("epoch", "seconds") and _is_number(value):
            tracker.log_metric(key, value, int(record["epoch"]))


def _log_clean_metrics(tracker: Tracker, metrics: dict[str, Any]) -> None:
    for split, result in (metrics.get("splits") or {}).items():
        if _is_number(result.get("accuracy")):
            tracker.log_metric(f"clean_accuracy/{split}", result["accuracy"])


def _log_per_eps(tracker: Tracker, key: str, epsilons: list[float], values: list[Any]) -> None:
    """One series per curve (step = epsilon in 1/255 x 100, so TensorBoard's x axis is eps)."""
    for eps, value in zip(epsilons, values, strict=False):
        if _is_number(value):
            tracker.log_metric(key, value, round(eps * 255 * 100))


def _log_flags(tracker: Tracker, flags: list[dict[str, Any]]) -> None:
    tracker.log_metric("sanity_flags", len(flags))
    if flags:
        tracker.log_text("sanity_flags", "\n".join(
            f"[{f.get('severity', '?')}] {f.get('code', f.get('name', '?'))}: {f.get('message', '')}"
            for f in flags))


def _log_curves(tracker: Tracker, curves: dict[str, Any]) -> None:
    tracker.log_params({**dict(flatten({"attack": curves.get("attack")})),
                        "epsilons": curves.get("epsilons"), "n": curves.get("n")})
    tracker.log_metric("clean_accuracy", curves.get("clean_accuracy", float("nan")))
    for curve in curves.get("curves", []):
        _log_per_eps(tracker, f"robust_accuracy/{curve['label']}", curves["epsilons"],
                     curve["accuracy"])
    _log_flags(tracker, curves.get("flags") or [])


def _log_attack(tracker: Tracker, result: dict[str, Any]) -> None:
    tracker.log_params({**dict(flatten({"attack": result.get("attack")})),
                        "epsilons": result.get("epsilons"), "n": result.get("n"),
                        "run_dir": result.get("run_dir"), "split": result.get("split")})
    tracker.log_metric("clean_accuracy", result.get("clean_accuracy", float("nan")))
    for key in ("robust_accuracy", "success_rate", "delta_linf_mean", "delta_l2_mean"):
        if isinstance(result.get(key), list):
            _log_per_eps(tracker, key, result["epsilons"], result[key])


def _log_transfer(tracker: Tracker, result: dict[str, Any]) -> None:
    models = result.get("models") or []
    tracker.log_params({**dict(flatten({"attack": result.get("attack")})), "models": models})
    for source, row in zip(models, result.get("accuracy") or [], strict=False):
        for target, value in zip(models, row, strict=False):
            if _is_number(value):
                tracker.log_metric(f"transfer_accuracy/{source}->{target}", value)


def _log_study_results(tracker: Tracker, results: dict[str, Any]) -> None:
    for key, value in flatten(results):
        if _is_number(value):
            tracker.log_metric(f"results/{key}", value)
    flags = [flag for key, value in flatten(results) if key.endswith("flags")
             and isinstance(value, list) for flag in value if isinstance(flag, dict)]
    _log_flags(tracker, flags)


_LOGGERS = {
    "config.json": _log_run_config,
    "history.json": _log_history,
    "metrics.json": _log_clean_metrics,
    "curves.json": _log_curves,
    "attack.json": _log_attack,
    "transfer.json": _log_transfer,
    "results.json": _log_study_results,
}


def track_folder(kind: str, folder: Path, run_name: str, uri: str | None = None,
                 *, only: tuple[str, ...] | None = None,
                 tracker: Tracker | None = None) -> list[str]:
    """Log ``folder``'s result files into ``tracker`` (the one the command logged to live),
    else into a new tracker of ``kind``; then close it."""
    tracker = tracker or open_tracker(kind, folder, run_name, uri)
    try:
        logged = log_results(tracker, folder, only=only)
    finally:
        tracker.close()
    inner = getattr(tracker, "opened", tracker)
    where = getattr(inner, "log_dir", None) or getattr(inner, "uri", "")
    logger.info("tracked %s in %s (%s)", ", ".join(logged) or "nothing", kind, where)
    return logged
