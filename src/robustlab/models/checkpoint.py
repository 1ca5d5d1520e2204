"""Run-directory checkpoints: ``model.safetensors`` (weights, no pickle) + ``config.json``.

The model is rebuilt from the JSON spec with ``pretrained=None`` (nothing is downloaded) and the
weights are loaded strictly from the safetensors file.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.io import atomic_path, read_json, write_json
from robustlab.models.classifier import ImageClassifier, ModelSpec
from robustlab.models.factory import create_model
from robustlab.models.pretrained import read_safetensors, warn_non_finite
from robustlab.schemas import RunConfigFile, validate_record

FORMAT = "robustlab-run"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_RESERVED = ("format", "format_version", "robustlab_version", "model")


def _version() -> str:
    try:
        return importlib.metadata.version("robustlab")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def save_checkpoint(run_dir: str | Path, model: ImageClassifier, config: Mapping[str, Any]) -> Path:
    """Write ``run_dir/model.safetensors`` and ``run_dir/config.json``, each atomically.

    config.json = {"format", "format_version", "robustlab_version", "model": spec, **config}.
    Returns ``run_dir``.
    """
    from safetensors.torch import save_file

    clash = sorted(set(config) & set(_RESERVED))
    if clash:
        raise ValueError(f"config keys {clash} are reserved for the checkpoint itself")
    run_dir = Path(run_dir)
    # safetensors needs dense row-major tensors; channels_last weights are not.
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    write_json(
        run_dir / CONFIG_FILE,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "robustlab_version": _version(),
            "model": dataclasses.asdict(model.spec),
            **config,
        },
    )
    return run_dir


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The validated ``config.json`` of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not (run_dir / WEIGHTS_FILE).is_file() and not _imported(run_dir):
        raise UserError(f"{run_dir} is not a run directory (no {WEIGHTS_FILE})")
    config = read_json(run_dir / CONFIG_FILE, what="run config")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{run_dir / CONFIG_FILE} is not a robustlab run config")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"incompatible version: {run_dir} has run format {version!r}, this robustlab "
            f"({_version()}) reads format {FORMAT_VERSION}"
        )
    if "model" not in config:
        raise UserError(f"{run_dir / CONFIG_FILE} has no 'model' entry")
    return validate_record(config, RunConfigFile, str(run_dir / CONFIG_FILE))


def _imported(run_dir: Path) -> bool:
    """A run made by `robustlab import`: a copy of a foreign model file instead of weights."""
    return any((run_dir / f"model{suffix}").is_file() for suffix in (".onnx", ".keras", ".h5", ".pt"))


def load_checkpoint(run_dir: str | Path) -> tuple[ImageClassifier, dict[str, Any]]:
    """Rebuild a saved classifier (in eval mode, on CPU) and return it with its run config."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if "foreign" in config:
        from robustlab.models.foreign import load_foreign

        return load_foreign(run_dir, config), config
    spec = dataclasses.replace(ModelSpec.from_dict(config["model"]), pretrained=None)
    model = create_model(spec)
    state = read_safetensors(run_dir / WEIGHTS_FILE)
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    wrong = [k for k in set(state) & set(expected) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise UserError(
            f"weights in {run_dir / WEIGHTS_FILE} do not match its model spec ({spec.arch}): "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of the wrong shape"
        )
    warn_non_finite(state, run_dir / WEIGHTS_FILE)
    model.load_state_dict(state, strict=True)
    return model.eval(), config
