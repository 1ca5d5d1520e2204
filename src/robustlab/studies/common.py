"""Steps and report sections shared by the studies: data, training, robustness curves, transfer.

Every step function reads what it needs from the run directory (earlier steps' folders) or the
per-process cache, calls the library, writes its files into its own folder through
``robustlab.io`` and returns a small JSON-able result that the runner records.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustlab.io import read_json, write_json
from robustlab.schemas import CurvesFile, TransferFile, read_record
from robustlab.studies.config import CurvesConfig, DataConfig, ModelConfig, TransferConfig
from robustlab.studies.runner import Step, StepContext

if TYPE_CHECKING:
    import torch
    from torch import nn

    from robustlab.data import DataSplits
    from robustlab.reporting import Section

log = logging.getLogger(__name__)

# Rough sizes of the named sets, for time estimates before anything is loaded.
_DATASET_SIZES = {
    "plantvillage-tomato": 3997,
    "fashion-mnist": 70000,
    "mnist": 70000,
    "utkface-gender": 2000,
    "digits": 1797,
}


# -------------------------------------------------------------------------------- data


def splits_for(ctx: StepContext, data: DataConfig) -> DataSplits:
    """The splits of ``data``, loaded once per process."""
    from robustlab.data import load_splits

    key = "splits:" + json.dumps(data.model_dump(mode="json"), sort_keys=True)
    if key not in ctx.cache:
        ctx.cache[key] = load_splits(data.spec(), ctx.data_dir)
    return ctx.cache[key]


def test_images(
    ctx: StepContext, data: DataConfig, limit: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` test images ``(N, C, H, W)`` and labels ``(N,)`` (all when None)."""
    test = splits_for(ctx, data).test
    n = len(test) if limit is None else min(limit, len(test))
    return test.images[:n], test.labels[:n]


def estimated_size(data: DataConfig) -> int:
    """Images the data config will yield (a guess for progress estimates)."""
    total = _DATASET_SIZES.get(data.name, 2000)
    return min(total, data.limit) if data.limit else total


def data_step(data: DataConfig) -> Step:
    def run(ctx: StepContext) -> dict[str, Any]:
        info = splits_for(ctx, data).info()
        write_json(ctx.dir / "data.json", info)
        return {key: info[key] for key in ("source", "task", "classes", "image_shape", "sizes")}

    return Step("data", f"load data {data.name}", run, 3.0)


# -------------------------------------------------------------------------------- models


def train_step_name(model: str) -> str:
    return f"train-{model}"


def train_step(model: ModelConfig, data: DataConfig, expected_seconds: float) -> Step:
    """Train ``model`` into the step folder (``train_run`` resumes from its last epoch)."""
    if model.run is not None:
        return run_step(model, data)

    def run(ctx: StepContext) -> dict[str, Any]:
        from robustlab.training import train_run

        metrics = _finished_metrics(ctx.dir)
        if metrics is None:
            objective, defence = model.defence.build() if model.defence else (None, None)
            metrics = train_run(
                ctx.dir,
                data.spec(),
                model.model_spec(),
                model.train_config(),
                objective=objective,
                defence=defence,
                data_dir=ctx.data_dir,
                progress=ctx.progress,
                device=ctx.device,
                on_epoch=ctx.epoch_callback(),
            )
        # Timings live in the runner's records; results hold only what a rerun reproduces.
        return {key: value for key, value in metrics.items() if key != "seconds"}

    return Step(train_step_name(model.name), f"train {model.name}", run, expected_seconds)


def _finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    """Metrics of a training run that finished before the study was killed, else None."""
    if not (run_dir / "model.safetensors").exists() or not (run_dir / "config.json").exists():
        return None
    if any(run_dir.rglob("train_state.pt")):
        return None  # state is cleared only after the final weights are written
    return read_json(run_dir / "config.json", "training run config").get("metrics")


def load_model(ctx: StepContext, name: str) -> nn.Module:
    """The model ``name`` in eval mode, cached: trained in its training step's folder, or the
    run folder that step loaded (refused when its weights changed since)."""
    from robustlab.models import load_checkpoint

    key = f"model:{name}"
    if key not in ctx.cache:
        loaded = ctx.results.get(train_step_name(name), {})
        if "run" in loaded:
            model, _ = _load_run(name, Path(loaded["run"]), loaded["sha256"])
        else:
            model, _ = load_checkpoint(ctx.step_dir(train_step_name(name)))
        ctx.cache[key] = model.to(ctx.device).eval()
    return ctx.cache[key]


def on_device(ctx: StepContext, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` on the device the study's models run on (``robustlab run --device``)."""
    return tuple(tensor.to(ctx.device) for tensor in tensors)


def run_step(model: ModelConfig, data: DataConfig) -> Step:
    """Load the run folder ``model.run`` in place of training: checked against the study's
    data, scored on its splits, and the sha256 of its weights recorded for later steps."""
    assert model.run is not None

    def run(ctx: StepContext) -> dict[str, Any]:
        from robustlab.evaluation import predict_logits

        source = model.run.resolve()
        loaded, config = _load_run(model.name, source, None)
        loaded.to(ctx.device)
        splits = splits_for(ctx, data)
        _check_run_fits(model.name, config, splits)
        result: dict[str, Any] = {
            "run": str(source),
            "sha256": _weights_sha256(source, config),
            "arch": config["model"]["arch"],
            "epochs_run": (config.get("metrics") or {}).get("epochs_run"),
        }
        for split in ("train", "val", "test"):
            images = getattr(splits, split)
            predicted = predict_logits(loaded, images.images, _SCORING_BATCH).argmax(1)
            result[f"{split}_accuracy"] = (predicted == images.labels).float().mean().item()
        ctx.cache[f"model:{model.name}"] = loaded
        return result

    return Step(train_step_name(model.name), f"load {model.name} from {model.run}", run, 3.0)


_SCORING_BATCH = 100


def _weights_sha256(run_dir: Path, config: Mapping[str, Any]) -> str:
    """The sha256 of the file holding a run's weights (an imported run: its model file)."""
    from robustlab.models.checkpoint import WEIGHTS_FILE
    from robustlab.models.foreign.importer import sha256_of

    foreign = config.get("foreign")
    return sha256_of(run_dir / (foreign["file"] if foreign else WEIGHTS_FILE))


def _load_run(name: str, run_dir: Path, sha256: str | None) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``run_dir`` in eval mode and its run config; with ``sha256``, refused
    unless its weights still hash to it."""
    from robustlab.errors import UserError
    from robustlab.models import load_checkpoint

    try:
        model, config = load_checkpoint(run_dir)
    except UserError as error:
        raise UserError(f"model '{name}': {error}") from None
    if sha256 is not None and _weights_sha256(run_dir, config) != sha256:
        raise UserError(
            f"model '{name}': the weights of run {run_dir} changed since this study loaded "
            "them (sha256 differs); run the study again with --restart"
        )
    return model.eval(), config


def _check_run_fits(name: str, config: Mapping[str, Any], splits: DataSplits) -> None:
    """A loaded run must take the study's images and answer in its classes, in its order."""
    from robustlab.errors import UserError

    spec = config["model"]
    images = splits.test.images
    wanted = (int(images.shape[1]), int(images.shape[-1]))
    if (spec.get("in_chans"), spec.get("input_size")) != wanted:
        raise UserError(
            f"model '{name}': run takes {spec.get('in_chans')}x{spec.get('input_size')}px images "
            f"but the study's data are {wanted[0]}x{wanted[1]}px; set data.image_size / "
            "data.channels to match"
        )
    classes = [str(c) for c in splits.test.classes]
    if [str(c) for c in config.get("classes") or []] != classes:
        raise UserError(
            f"model '{name}': the run's classes {config.get('classes')} differ from the study "
            f"data's {classes} (same names, same order)"
        )


def train_estimate(model: ModelConfig, data: DataConfig) -> float:
    """Seconds to train ``model`` on 2 CPU cores, roughly (for the time-left estimate)."""
    n_train = estimated_size(data) * 0.7
    side = data.image_size or 96
    pixels = (model.resize_to or side) ** 2 / 96**2
    if model.strategy == "frozen":
        per_epoch, full_epochs = 0.0, 0
    elif model.strategy == "finetune":
        per_epoch, full_epochs = 12e-3, model.epochs - model.head_epochs
    else:
        per_epoch, full_epochs = 6e-3, model.epochs
    cost = 5e-3 * n_train * pixels  # one feature or scoring pass
    if model.pretrained is None and model.strategy == "scratch":
        cost = 2e-3 * n_train * pixels
    defence = 4.0 if model.defence else 1.0
    return 2 + cost * 2 + per_epoch * n_train * pixels * full_epochs * defence


# -------------------------------------------------------------------------------- attacks


def curves_step_name(curves: CurvesConfig) -> str:
    return f"attack-{curves.name}"


def curves_step(
    curves: CurvesConfig,
    data: DataConfig,
    target: str,
    *,
    batch_size: int,
    expected_seconds: float,
) -> Step:
    """Robustness curves of ``target``: white-box, black-box from each surrogate, noise."""

    def run(ctx: StepContext) -> dict[str, Any]:
        from robustlab.evaluation import predict_logits, robustness_curves, write_robustness_outputs

        x, y = test_images(ctx, data, curves.limit)
        model = load_model(ctx, target)
        surrogates = {name: load_model(ctx, name) for name in curves.surrogates or []}
        keep = range(min(len(x), max(16, curves.examples)))
        result = robustness_curves(
            model,
            x,
            y,
            curves.attack.build(eps=max(curves.eps)),
            curves.eps,
            surrogates=surrogates,
            noise=curves.noise,
            target_name=target,
            batch_size=batch_size,
            keep=keep,
            sanity=curves.sanity,
            unbounded_check=curves.unbounded_check,
            seed=ctx.seed,
        )
        clean_logits = predict_logits(model, x, batch_size)
        write_robustness_outputs(
            ctx.dir,
            result,
            model,
            x,
            y,
            clean_logits,
            splits_for(ctx, data).classes,
            examples=curves.examples,
            save=len(keep),
            batch_size=batch_size,
        )
        return curves_summary(result.to_dict(), curves.attack.display)

    title = f"attack {curves.name} on {target}"
    return Step(curves_step_name(curves), title, run, expected_seconds)


def curves_summary(data: Mapping[str, Any], label: str) -> dict[str, Any]:
    """The part of a curves result a study's results.json keeps."""
    return {
        "label": label,
        "target": data["target"],
        "attack": data["attack"],
        "epsilons": data["epsilons"],
        "n": data["n"],
        "clean_accuracy": data["clean_accuracy"],
        "curves": [
            {key: curve[key] for key in ("label", "kind", "source", "accuracy")}
            for curve in data["curves"]
        ],
        "unbounded_accuracy": data.get("unbounded_accuracy"),
        "flags": [
            {key: flag[key] for key in ("severity", "code", "message")} for flag in data["flags"]
        ],
    }


def curves_estimate(curves: CurvesConfig, n_test: int, cost_per_image: float) -> float:
    """Seconds for a curves step: attack passes x images x per-image gradient cost."""
    n = min(n_test, curves.limit or n_test)
    steps = int(curves.attack.settings.get("steps", 1 if curves.attack.name == "fgsm" else 10))
    sources = len(curves.surrogates or [])
    passes = len(curves.eps) * steps * (1 + sources)
    passes += len(curves.eps) * (2 + sources)  # scoring, noise
    if curves.sanity:
        passes += 3 + (20 if curves.unbounded_check else 0)
    return 2 + passes * n * cost_per_image


def transfer_estimate(n_models: int, n_test: int, cost_per_image: float) -> float:
    """Seconds for a transfer matrix: each model crafts once, then every model scores it."""
    return 2 + n_models * (2 + n_models) * n_test * cost_per_image


def transfer_step(
    transfer: TransferConfig,
    data: DataConfig,
    models: Sequence[str],
    *,
    batch_size: int,
    expected_seconds: float,
) -> Step:
    """The N x N transfer matrix over ``models`` at one epsilon."""

    def run(ctx: StepContext) -> dict[str, Any]:
        from robustlab.evaluation import transfer_matrix
        from robustlab.reporting.results import TRANSFER_FILE

        x, y = test_images(ctx, data, transfer.limit)
        matrix = transfer_matrix(
            {name: load_model(ctx, name) for name in models},
            x,
            y,
            transfer.attack.build(eps=transfer.eps),
            batch_size=batch_size,
            seed=ctx.seed,
        ).to_dict()
        write_json(ctx.dir / TRANSFER_FILE, matrix)
        return {
            key: matrix[key]
            for key in ("models", "attack", "eps", "n", "accuracy", "clean_accuracy", "flags")
        }

    return Step("transfer-matrix", "transfer matrix", run, expected_seconds)


# -------------------------------------------------------------------------------- report


def curves_section(
    run_dir: Path, step: str, section_id: str, intro: str = "", label: str = ""
) -> Section:
    """A report section redrawn from a curves step's ``curves.json``."""
    from robustlab.reporting.results import CURVES_FILE
    from robustlab.reporting.results import curves_section as build

    directory = run_dir / step
    data = read_record(directory / CURVES_FILE, CurvesFile)
    section = build(data, directory, run_dir, section_id)
    if label:
        section.title = f"Robustness: {label} on {data['target']}"
    if intro:
        section.text = f"{intro}\n\n{section.text}"
    return section


def transfer_section(run_dir: Path, section_id: str, intro: str = "") -> Section:
    from robustlab.reporting.results import TRANSFER_FILE
    from robustlab.reporting.results import transfer_section as build

    directory = run_dir / "transfer-matrix"
    section = build(
        read_record(directory / TRANSFER_FILE, TransferFile), directory, run_dir, section_id
    )
    if intro:
        section.text = f"{intro}\n\n{section.text}"
    return section


def models_table(results: Mapping[str, Any], models: Sequence[ModelConfig], caption: str) -> Any:
    """Accuracy of every trained model on each split."""
    from robustlab.reporting import Table

    rows = []
    for model in models:
        metrics = results.get(train_step_name(model.name), {})
        rows.append(
            [
                model.name,
                model.describe() + (f" ({model.pretrained})" if model.pretrained else ""),
                "loaded" if model.run else model.strategy
                + (f" + {model.defence.name}" if model.defence else ""),
                metrics.get("epochs_run"),
                metrics.get("train_accuracy"),
                metrics.get("val_accuracy"),
                metrics.get("test_accuracy"),
            ]
        )
    return Table(
        ["model", "architecture", "training", "epochs", "train acc", "val acc", "test acc"],
        rows,
        caption,
    )


def accuracy_at(
    summary: Mapping[str, Any], kind: str, eps: float, source: str | None = None
) -> float:
    """Accuracy of the first curve of ``kind`` (and ``source``) at the epsilon nearest ``eps``."""
    epsilons = summary["epsilons"]
    index = min(range(len(epsilons)), key=lambda i: abs(epsilons[i] - eps))
    for curve in summary["curves"]:
        if curve["kind"] == kind and (source is None or curve["source"] == source):
            value = curve["accuracy"][index]
            return math.nan if value is None else float(value)
    return math.nan
