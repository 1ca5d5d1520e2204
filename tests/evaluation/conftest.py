"""Tiny classifiers fitted on the always-available ``digits`` set (8x8 grey, 10 classes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.data import DataSpec, DataSplits, load_splits
from robustlab.models import ModelSpec, create_model, save_checkpoint

DIGITS = DataSpec("digits", stratify=True)


def fit(model: nn.Module, splits: DataSplits, steps: int = 80, seed: int = 0) -> nn.Module:
    """A few dozen Adam steps: ~95 % test accuracy on digits in a few CPU seconds."""
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    images, labels = splits.train.images, splits.train.labels
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(images), (32,))
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


class Quantised(nn.Module):
    """Gradient masking on purpose: ``round(x * 8) / 8`` before the model has zero gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 8) / 8)


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    return load_splits(DIGITS)


@pytest.fixture(scope="session")
def target_model(digits: DataSplits) -> nn.Module:
    spec = ModelSpec(arch="simple-cnn", num_classes=10, in_chans=1, input_size=8)
    torch.manual_seed(0)
    return fit(create_model(spec), digits, seed=0)


@pytest.fixture(scope="session")
def surrogate_model(digits: DataSplits) -> nn.Module:
    spec = ModelSpec(arch="simple-cnn", num_classes=10, in_chans=1, input_size=8)
    torch.manual_seed(1)
    return fit(create_model(spec), digits, seed=1)


@pytest.fixture(scope="session")
def masked_model(target_model: nn.Module) -> nn.Module:
    return Quantised(target_model).eval()


@pytest.fixture(scope="session")
def test_batch(digits: DataSplits) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 120 test images ``(120, 1, 8, 8)`` and labels."""
    return digits.test.images[:120], digits.test.labels[:120]


def _make_run(run_dir: Path, model: nn.Module, splits: DataSplits, data: DataSpec = DIGITS) -> Path:
    save_checkpoint(
        run_dir,
        model,
        {
            "classes": list(splits.train.classes),
            "data": dataclasses.asdict(data),
            "data_info": splits.info(),
            "train": {"note": "fitted in a test"},
            "defence": None,
            "metrics": {},
        },
    )
    return run_dir


@pytest.fixture(scope="session")
def make_run():
    """``make_run(run_dir, model, splits, data=DIGITS)``: a run directory as ``robustlab train``
    writes it (weights + config.json)."""
    return _make_run


@pytest.fixture(scope="session")
def digits_spec() -> DataSpec:
    return DIGITS
