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
from robustlab.studies.runner import Step, StepContext, Work

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


def train_step(model: ModelConfig, data: DataConfig) -> Step:
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

    title = f"train {model.name}"
    return Step(train_step_name(model.name), title, run, work=train_work(model, data))


def _finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    """Metrics of a training run that finished before the study was killed, else None.

    Under torchrun rank 0 reads its step folder (the others' is scratch) and every rank agrees."""
    from robustlab.distributed import on_main

    return on_main(lambda: _read_finished_metrics(run_dir))


def _read_finished_metrics(run_dir: Path) -> dict[str, Any] | None:
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
        from robustlab.training.recipe import score_splits

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
            **score_splits(loaded, splits, _SCORING_BATCH),
        }
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


def pixel_scale(side: int | None) -> float:
    """Pixels of a ``side`` x ``side`` image relative to 96 x 96, the size a unit of work is at."""
    return ((side or 96) / 96) ** 2


def test_size(data: DataConfig, limit: int | None) -> int:
    """Test images an attack step will see (a guess before the data is read)."""
    n_test = max(1, round(estimated_size(data) * data.split[2]))
    return min(n_test, limit) if limit else n_test


def train_work(model: ModelConfig, data: DataConfig) -> Work:
    """Image passes to train ``model``: each trained epoch, plus one feature / scoring pass."""
    n_train = estimated_size(data) * data.split[0]
    if model.strategy == "frozen":
        full_epochs = 0  # only the head trains, on features computed once
    elif model.strategy == "finetune":
        full_epochs = model.epochs - model.head_epochs
    else:
        full_epochs = model.epochs
    kind = f"train {model.arch}" + (f" {model.defence.name}" if model.defence else "")
    passes = n_train * pixel_scale(model.resize_to or data.image_size) * (full_epochs + 1)
    return Work(kind, passes)


# -------------------------------------------------------------------------------- attacks


def curves_step_name(curves: CurvesConfig) -> str:
    return f"attack-{curves.name}"


def curves_step(
    curves: CurvesConfig,
    data: DataConfig,
    target_model: str,
    *,
    batch_size: int,
    work: Work,
) -> Step:
    """Robustness curves of ``target_model``: white-box, black-box from each surrogate, noise."""

    def run(ctx: StepContext) -> dict[str, Any]:
        from robustlab.evaluation import predict_logits, robustness_curves, write_robustness_outputs
        from robustlab.evaluation.outputs import OutputRequest
        from robustlab.evaluation.records import EvaluatedImages
        from robustlab.evaluation.robustness import CurveRequest

        x, y = test_images(ctx, data, curves.limit)
        model = load_model(ctx, target_model)
        surrogates = {name: load_model(ctx, name) for name in curves.surrogates or []}
        keep_examples = range(min(len(x), max(16, curves.examples)))
        request = CurveRequest(
            curves.attack.build(eps=max(curves.eps)),
            tuple(curves.eps),
            target_name=target_model,
            noise=curves.noise,
            batch_size=batch_size,
            keep_examples=tuple(keep_examples),
            sanity=curves.sanity,
            unbounded_check=curves.unbounded_check,
            seed=ctx.seed,
        )
        result = robustness_curves(model, x, y, request, surrogate_models=surrogates)
        clean_logits = predict_logits(model, x, batch_size)
        images = EvaluatedImages(x, y, clean_logits, splits_for(ctx, data).classes)
        outputs = OutputRequest(
            examples=curves.examples, adversarials=len(keep_examples), batch_size=batch_size
        )
        write_robustness_outputs(ctx.dir, result, model, images, outputs)
        return curves_summary(result.to_dict(), curves.attack.display)

    title = f"attack {curves.name} on {target_model}"
    return Step(curves_step_name(curves), title, run, work=work)


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


def curves_work(
    curves: CurvesConfig, data: DataConfig, attacked: ModelConfig, sources: int | None = None
) -> Work:
    """Input-gradient passes of a curves step: attack steps x epsilons x images, plus scoring."""
    n = test_size(data, curves.limit)
    steps = int(curves.attack.settings.get("steps", 1 if curves.attack.name == "fgsm" else 10))
    sources = len(curves.surrogates or []) if sources is None else sources
    passes = len(curves.eps) * steps * (1 + sources)
    passes += len(curves.eps) * (2 + sources)  # scoring, noise
    if curves.sanity:
        passes += 3 + (20 if curves.unbounded_check else 0)
    scale = pixel_scale(attacked.resize_to or data.image_size)
    return Work(f"attack {attacked.arch}", passes * n * scale)


def transfer_work(
    transfer: TransferConfig, data: DataConfig, models: Sequence[ModelConfig]
) -> Work:
    """Passes of a transfer matrix: each model crafts once, then every model scores it."""
    n = test_size(data, transfer.limit)
    per_image = sum(pixel_scale(m.resize_to or data.image_size) for m in models)
    return Work("attack transfer-matrix", (2 + len(models)) * n * per_image)


def transfer_step(
    transfer: TransferConfig,
    data: DataConfig,
    models: Sequence[str],
    *,
    batch_size: int,
    work: Work,
) -> Step:
    """The N x N transfer matrix over ``models`` at one epsilon."""

    def run(ctx: StepContext) -> dict[str, Any]:
        from robustlab.evaluation import TransferRequest, transfer_matrix
        from robustlab.reporting.results import TRANSFER_FILE

        x, y = test_images(ctx, data, transfer.limit)
        request = TransferRequest(
            transfer.attack.build(eps=transfer.eps), batch_size=batch_size, seed=ctx.seed
        )
        matrix = transfer_matrix(
            {name: load_model(ctx, name) for name in models}, x, y, request
        ).to_dict()
        write_json(ctx.dir / TRANSFER_FILE, matrix)
        return {
            key: matrix[key]
            for key in ("models", "attack", "eps", "n", "accuracy", "clean_accuracy", "flags")
        }

    return Step("transfer-matrix", "transfer matrix", run, work=work)


def transfer_steps(
    transfer: TransferConfig | None,
    data: DataConfig,
    models: Mapping[str, ModelConfig],
    *,
    batch_size: int,
) -> list[Step]:
    """The transfer-matrix step over ``transfer.models`` (default: all ``models``), if any."""
    if transfer is None:
        return []
    names = transfer.models or list(models)
    work = transfer_work(transfer, data, [models[name] for name in names])
    return [transfer_step(transfer, data, names, batch_size=batch_size, work=work)]


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
                "loaded"
                if model.run
                else model.strategy + (f" + {model.defence.name}" if model.defence else ""),
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
