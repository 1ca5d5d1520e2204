"""Run-directory checkpoints: exact round trip, no download, clear errors, atomic writes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import robustlab.models.factory
from robustlab.errors import UserError
from robustlab.models import (
    ImageClassifier,
    ModelSpec,
    create_model,
    load_checkpoint,
    save_checkpoint,
    to_channels_last,
)

CONFIG = {"classes": ["healthy", "sick", "other"], "train": {"epochs": 2}}


def _trained_stats(model: ImageClassifier, channels: int, size: int) -> ImageClassifier:
    """Move BatchNorm running statistics away from their defaults, as training would."""
    model.train()
    with torch.no_grad():
        model(torch.rand(4, channels, size, size))
    return model.eval()


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("tf_efficientnet_lite0", 3, input_size=32, drop_rate=0.2),
        ModelSpec("simple-cnn", 3, input_size=16, mean=(0.1, 0.2, 0.3)),
        ModelSpec("face-cnn", 3, in_chans=1, input_size=48, resize_to=24),
    ],
    ids=lambda spec: spec.arch,
)
def test_round_trip_gives_identical_logits(tmp_path: Path, spec: ModelSpec) -> None:
    model = _trained_stats(create_model(spec), spec.in_chans, spec.input_size)
    x = torch.rand(3, spec.in_chans, spec.input_size, spec.input_size)
    with torch.no_grad():
        expected = model(x)

    save_checkpoint(tmp_path / "run", model, CONFIG)
    loaded, config = load_checkpoint(tmp_path / "run")

    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert not loaded.training
    assert loaded.spec == spec
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert config["format"] == "robustlab-run"
    assert config["format_version"] == 1
    assert isinstance(config["robustlab_version"], str)
    assert config["model"]["arch"] == spec.arch
    assert {key: config[key] for key in CONFIG} == CONFIG


def test_pretrained_run_reloads_without_fetching_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = create_model(ModelSpec("tf_efficientnet_lite0", 2, input_size=32, pretrained="offline"))
    to_channels_last(model)  # non-contiguous weights must still save
    save_checkpoint(tmp_path, model, {})

    def no_fetch() -> None:
        raise AssertionError("load_checkpoint must not read pretrained weights")

    monkeypatch.setattr(robustlab.models.factory, "offline_state_dict", no_fetch)
    loaded, config = load_checkpoint(tmp_path)

    assert config["model"]["pretrained"] == "offline"  # the record is kept as written
    saved = model.state_dict()
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, saved[key]), key


def _drop(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def _truncate(run: Path) -> None:
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])


def _edit_config(**changes: object) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        config = json.loads((run / "config.json").read_text())
        for key, value in changes.items():
            if isinstance(value, dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        (run / "config.json").write_text(json.dumps(config))

    return edit


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda run: shutil.rmtree(run), "run directory not found"),
        (_drop("model.safetensors"), "not a run directory"),
        (_truncate, "truncated or corrupt"),
        (_drop("config.json"), "run config not found"),
        (lambda run: (run / "config.json").write_text("{not json"), "unreadable or corrupt"),
        (_edit_config(format_version=2), "incompatible version"),
        (_edit_config(format_version=0), "incompatible version"),
        (_edit_config(format="something-else"), "not a robustlab run config"),
        (_edit_config(model={"num_classes": 5}), "do not match its model spec"),
        (_edit_config(model={"arch": "small-cnn"}), "do not match its model spec"),
        (_edit_config(model={"colour": "red"}), "unknown model spec field"),
    ],
)
def test_broken_run_directories_are_user_errors(
    tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    run = tmp_path / "run"
    save_checkpoint(run, create_model(ModelSpec("simple-cnn", 3, input_size=12)), {})
    damage(run)
    with pytest.raises(UserError, match=message):
        load_checkpoint(run)


def test_failed_save_leaves_no_half_written_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    def crash(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, create_model(ModelSpec("simple-cnn", 2, input_size=8)), {})
    assert list(tmp_path.iterdir()) == []


def test_reserved_config_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(
            tmp_path, create_model(ModelSpec("simple-cnn", 2, input_size=8)), {"model": 1}
        )
