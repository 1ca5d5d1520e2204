"""One training run, end to end: data -> model -> fit -> score -> run directory."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from robustlab import distributed
from robustlab.data import DataSpec, DataSplits, load_splits
from robustlab.errors import UserError, first_difference
from robustlab.io import read_json, remove_stale_temporaries, write_json
from robustlab.models import ImageClassifier, ModelSpec, create_model, save_checkpoint
from robustlab.training.config import TrainConfig
from robustlab.training.loop import STATE_FILE, EpochCallback, Objective, clear_state, fit
from robustlab.training.modes import eval_mode

log = logging.getLogger(__name__)

SETTINGS_FILE = "train_settings.json"  # what an unfinished run was started with


def complete_specs(data: DataSpec, model: ModelSpec) -> tuple[DataSpec, ModelSpec]:
    """Pretrained RGB backbones get RGB input: grey data sets are expanded to 3 channels."""
    if model.pretrained is not None and data.channels is None:
        data = dataclasses.replace(data, channels=model.in_chans)
    return data, model


@dataclasses.dataclass(frozen=True)
class Phase:
    """A further training phase of a run, on the same model (e.g. fine-tuning at a lower lr)."""

    name: str  # the ``stage`` in history.json; its resumable state lives in RUN_DIR/<name>
    config: TrainConfig


ModelInit = Callable[[ImageClassifier], None]  # changes a freshly built model in place


def train_run(
    run_dir: str | Path,
    data: DataSpec,
    model_spec: ModelSpec,
    config: TrainConfig,
    *,
    objective: Objective | None = None,
    defence: dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    init: ModelInit | None = None,
    then: Sequence[Phase] = (),
    extra: Mapping[str, Any] | None = None,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train a classifier and write ``RUN_DIR`` (weights, config, history); return its metrics.

    ``model_spec.num_classes``, ``in_chans`` and ``input_size`` are taken from the data.
    ``objective``/``defence``: a defence's training loss and its JSON-able settings, if any.
    ``init``: called on the model once built (seeded with ``config.seed``), before training,
    e.g. to copy pretrained blocks into it; ``then``: phases trained after ``config``;
    ``extra``: JSON-able settings of ``init`` and the caller, recorded in ``config.json``.
    ``device``: where the model and the train/val images live while training (one copy each).
    Started again after a crash, the run resumes from its last finished epoch; started again
    with other settings, it is refused (``UserError`` naming the first difference).
    Under torchrun every rank trains (DDP) and only rank 0 writes ``RUN_DIR``.
    ``device``: where the model and the train/val images live while training (one copy each).
    ``on_epoch``: called with each epoch's history record as it ends (live tracking).
    """
    run_dir = Path(run_dir)
    data, model_spec = complete_specs(data, model_spec)
    record = _run_record(data, model_spec, config, defence, then, extra)
    settings = json.loads(json.dumps(record, default=_plain))  # as it reads back from JSON
    if distributed.is_main():
        check_resume_settings(run_dir, settings)
    splits = load_splits(data, data_dir)
    model = _build_model(model_spec, splits, config.seed, init, device)
    if distributed.is_main() and not (run_dir / STATE_FILE).exists():
        write_json(run_dir / SETTINGS_FILE, settings)  # once data and model proved loadable

    start = time.perf_counter()
    phases = [Phase("train", config), *then]
    history = _fit_phases(run_dir, model, splits, phases, objective, progress, device, on_epoch)
    metrics = score_splits(model, splits, config.eval_batch_size)
    metrics |= {"epochs_run": len(history), "seconds": round(time.perf_counter() - start, 2)}
    if distributed.is_main():
        _write_run(run_dir, model, splits, {**record, "metrics": metrics}, history, phases)
    distributed.barrier()  # the run directory is complete before any rank moves on
    log.info(
        "%s: test accuracy %.4f (val %.4f) after %d epochs, %.0fs -> %s",
        model_spec.arch,
        metrics["test_accuracy"],
        metrics["val_accuracy"],
        len(history),
        metrics["seconds"],
        run_dir,
    )
    return metrics


def _run_record(
    data: DataSpec,
    model_spec: ModelSpec,
    config: TrainConfig,
    defence: dict[str, Any] | None,
    then: Sequence[Phase],
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What a run was started with: compared on resume, kept in ``config.json``."""
    record = {"data": data, "model": model_spec, "train": config.to_dict(), "defence": defence}
    if then:
        record["then"] = [{"name": p.name, "train": p.config.to_dict()} for p in then]
    return record | dict(extra or {})


def _write_run(
    run_dir: Path,
    model: ImageClassifier,
    splits: DataSplits,
    record: Mapping[str, Any],
    history: list[dict[str, Any]],
    phases: Sequence[Phase],
) -> None:
    """Write history.json, the weights and config.json; then drop the resumable state."""
    write_json(run_dir / "history.json", history)
    saved = {key: value for key, value in record.items() if key != "model"}  # the weights' own
    saved |= {"data": dataclasses.asdict(record["data"]), "data_info": splits.info()}
    save_checkpoint(run_dir, model, {"classes": list(splits.train.classes), **saved})
    for state_dir in _state_dirs(run_dir, phases):
        clear_state(state_dir)
    (run_dir / SETTINGS_FILE).unlink(missing_ok=True)


def _build_model(
    model_spec: ModelSpec,
    splits: DataSplits,
    seed: int,
    init: ModelInit | None,
    device: str | torch.device,
) -> ImageClassifier:
    """The model for ``splits`` (class count, channels and size from the data), seeded."""
    channels, size = splits.train.images.shape[1], splits.train.images.shape[-1]
    model_spec = dataclasses.replace(
        model_spec, num_classes=len(splits.train.classes), in_chans=channels, input_size=size
    )
    torch.manual_seed(seed)
    model = create_model(model_spec)
    if init is not None:
        init(model)
    return model.to(device)


def _state_dirs(run_dir: Path, phases: Sequence[Phase]) -> list[Path]:
    """The first phase keeps its resumable state in the run dir, later ones in sub-folders."""
    return [run_dir if index == 0 else run_dir / p.name for index, p in enumerate(phases)]


def _fit_phases(
    run_dir: Path,
    model: ImageClassifier,
    splits: DataSplits,
    phases: Sequence[Phase],
    objective: Objective | None,
    progress: bool,
    device: str | torch.device,
    on_epoch: EpochCallback | None = None,
) -> list[dict[str, Any]]:
    """``fit`` each phase in turn; the history of all, each record tagged with its phase."""
    train = (_on_device(splits.train.images, device), splits.train.labels.to(device))
    val = (_on_device(splits.val.images, device), splits.val.labels.to(device))
    history = []
    for phase, state_dir in zip(phases, _state_dirs(run_dir, phases), strict=True):
        records = fit(
            model,
            train,
            val,
            phase.config,
            objective,
            state_dir=state_dir,
            progress=progress,
            on_epoch=on_epoch,
        )
        tagged = len(phases) > 1  # a single phase keeps the plain history of ``fit``
        history += [{**record, "stage": phase.name} if tagged else record for record in records]
    return history


def _on_device(images: Any, device: str | torch.device) -> Any:
    """In-memory images moved once; a streamed split stays streamed (a float copy of a set too
    big for the memory budget is what streaming avoids): its batches move as they are formed."""
    from robustlab.data.stream import is_streamed

    return images if is_streamed(images) else images.to(device)


def score_splits(model: torch.nn.Module, splits: DataSplits, batch_size: int) -> dict[str, float]:
    """``{train,val,test}_accuracy`` of ``model``."""
    return {
        f"{name}_accuracy": accuracy(model, split.images, split.labels, batch_size)
        for name, split in (("train", splits.train), ("val", splits.val), ("test", splits.test))
    }


def _plain(value: Any) -> Any:
    """Specs (dataclasses) as dicts, anything else JSON cannot hold as text."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else str(value)


def check_resume_settings(run_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume ``run_dir``'s unfinished training under other (JSON) ``settings``.

    A resumed run must continue the same computation: other data, model, optimiser, learning
    rate or epochs would load mismatched weights or silently mix two trainings in one history.
    Temporary files of writes a kill interrupted are removed here (the caller owns the folder).
    """
    remove_stale_temporaries(run_dir)
    if not (run_dir / STATE_FILE).exists():
        return
    recorded = run_dir / SETTINGS_FILE
    if not recorded.exists():
        return  # a state from before settings were recorded: its loader checks what it can
    previous = read_json(recorded, "settings of the unfinished run")
    if previous != settings:
        change = first_difference(previous, settings)
        raise UserError(
            f"{run_dir} holds an unfinished training with other settings ({change}); "
            "run the same command to resume it, or pass --overwrite to start over"
        )


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128
) -> float:
    """Top-1 accuracy of ``model`` on [0, 1] images, in eval mode."""
    if len(labels) == 0:
        return float("nan")
    correct = 0
    device = next(iter(model.parameters())).device
    with eval_mode(model):
        for start in range(0, len(labels), batch_size):
            logits = model(images[start : start + batch_size].to(device))
            correct += (
                (logits.argmax(1).cpu() == labels[start : start + batch_size].cpu()).sum().item()
            )
    return correct / len(labels)
