"""train_run's hooks for studies: a model initialiser and further training phases."""

from __future__ import annotations

import json

import torch

from robustlab.data import DataSpec
from robustlab.models import ModelSpec, load_checkpoint
from robustlab.training import TrainConfig, train_run
from robustlab.training.recipe import Phase

DATA = DataSpec(name="digits", image_size=16, limit=120)
SPEC = ModelSpec(arch="small-cnn", num_classes=2)


def test_init_runs_on_the_built_model_and_phases_follow_in_order(tmp_path) -> None:
    seen = []

    def init(model: torch.nn.Module) -> None:  # e.g. copy blocks from another model
        seen.append(model)
        with torch.no_grad():
            for parameter in model.head.parameters():
                parameter.zero_()

    first = TrainConfig(strategy="scratch", epochs=2, lr=1e-3, batch_size=32)
    finetune = TrainConfig(strategy="scratch", epochs=1, lr=1e-4, batch_size=32)
    metrics = train_run(
        tmp_path,
        DATA,
        SPEC,
        first,
        init=init,
        then=[Phase("finetune", finetune)],
        extra={"transfer": {"blocks": 1}},
        progress=False,
    )
    assert len(seen) == 1 and seen[0].spec.num_classes == 10  # built for the data first
    assert metrics["epochs_run"] == 3
    history = json.loads((tmp_path / "history.json").read_text())
    assert [record["stage"] for record in history] == ["train", "train", "finetune"]
    assert not list(tmp_path.rglob("train_state.pt"))  # every phase's state cleared at the end
    model, config = load_checkpoint(tmp_path)
    assert config["then"] == [{"name": "finetune", "train": finetune.to_dict()}]
    assert config["transfer"] == {"blocks": 1} and config["metrics"] == metrics
    assert sum(p.abs().sum() for p in model.head.parameters()) > 0  # trained after init


def test_one_phase_keeps_the_plain_history_and_config(tmp_path) -> None:
    config = TrainConfig(strategy="scratch", epochs=1, batch_size=32)
    train_run(tmp_path, DATA, SPEC, config, progress=False)
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history) == 1 and "stage" not in history[0]
    assert "then" not in json.loads((tmp_path / "config.json").read_text())
