"""One training run, end to end: data -> model -> fit -> score -> run directory."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from robustlab import distributed
from robustlab.data import DataSpec, load_splits
from robustlab.errors import UserError, first_difference
from robustlab.io import read_json, remove_stale_temporaries, write_json
from robustlab.models import ModelSpec, create_model, save_checkpoint
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
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train a classifier and write ``RUN_DIR`` (weights, config, history); return its metrics.

    ``model_spec.num_classes``, ``in_chans`` and ``input_size`` are taken from the data.
    ``objective``/``defence``: a defence's training loss and its JSON-able settings, if any.
    Started again after a crash, the run resumes from its last finished epoch; started again
    with other settings, it is refused (``UserError`` naming the first difference).
    Under torchrun every rank trains (DDP) and only rank 0 writes ``RUN_DIR``.
    ``device``: where the model and the train/val images live while training (one copy each).
    ``on_epoch``: called with each epoch's history record as it ends (live tracking).
    """
    run_dir = Path(run_dir)
    data, model_spec = complete_specs(data, model_spec)
    settings = {"data": data, "model": model_spec, "train": config.to_dict(), "defence": defence}
    settings = json.loads(json.dumps(settings, default=_plain))  # as it reads back from JSON
    if distributed.is_main():
        check_resume_settings(run_dir, settings)
    splits = load_splits(data, data_dir)
    channels, size = splits.train.images.shape[1], splits.train.images.shape[-1]
    model_spec = dataclasses.replace(
        model_spec, num_classes=len(splits.train.classes), in_chans=channels, input_size=size
    )
    torch.manual_seed(config.seed)
    model = create_model(model_spec).to(device)
    if distributed.is_main() and not (run_dir / STATE_FILE).exists():
        write_json(run_dir / SETTINGS_FILE, settings)  # once data and model proved loadable

    start = time.perf_counter()
    history = fit(
        model,
        (splits.train.images.to(device), splits.train.labels.to(device)),
        (splits.val.images.to(device), splits.val.labels.to(device)),
        config,
        objective,
        state_dir=run_dir,
        progress=progress,
        on_epoch=on_epoch,
    )
    metrics = {
        f"{name}_accuracy": accuracy(model, split.images, split.labels, config.eval_batch_size)
        for name, split in (("train", splits.train), ("val", splits.val), ("test", splits.test))
    }
    metrics |= {"epochs_run": len(history), "seconds": round(time.perf_counter() - start, 2)}
    if distributed.is_main():
        write_json(run_dir / "history.json", history)
        save_checkpoint(
            run_dir,
            model,
            {
                "classes": list(splits.train.classes),
                "data": dataclasses.asdict(data),
                "data_info": splits.info(),
                "train": config.to_dict(),
                "defence": defence,
                "metrics": metrics,
            },
        )
        clear_state(run_dir)
        (run_dir / SETTINGS_FILE).unlink(missing_ok=True)
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
            correct += (logits.argmax(1).cpu() == labels[start : start + batch_size].cpu()).sum().item()
    return correct / len(labels)
