"""Opt-in augmentation: off by default and absent from the record, reproducible when on."""

from __future__ import annotations

import pytest
import torch

from robustlab.data import DataSpec, load_splits
from robustlab.errors import UserError
from robustlab.models import ModelSpec, create_model
from robustlab.training import TrainConfig, fit
from robustlab.training.augment import augment_batch


@pytest.fixture(scope="module")
def digits():
    return load_splits(DataSpec(name="digits", image_size=12))


def _train(digits, augment: tuple[str, ...]) -> tuple[dict, list]:
    torch.manual_seed(0)
    model = create_model(ModelSpec("small-cnn", num_classes=10, in_chans=1, input_size=12))
    config = TrainConfig(
        strategy="scratch", optimizer="adam", lr=3e-3, epochs=1, batch_size=32, augment=augment
    )
    train = (digits.train.images[:96], digits.train.labels[:96])
    val = (digits.val.images[:32], digits.val.labels[:32])
    history = fit(model, train, val, config, progress=False)
    return model.state_dict(), history


def test_off_by_default_and_not_recorded() -> None:
    assert TrainConfig().augment == ()
    assert "augment" not in TrainConfig().to_dict()
    assert TrainConfig(augment=("flip", "crop")).to_dict()["augment"] == ["flip", "crop"]
    with pytest.raises(UserError, match="augment must be a list of crop, flip, jitter"):
        TrainConfig(augment=("mixup",))


def test_augmented_training_is_reproducible_and_differs(digits) -> None:
    first, _ = _train(digits, ("crop", "flip", "jitter"))
    again, _ = _train(digits, ("crop", "flip", "jitter"))
    plain, _ = _train(digits, ())
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], plain[k]) for k in first)


def test_augment_batch_keeps_the_contract_and_the_global_rng() -> None:
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    out = augment_batch(x, ("crop", "flip", "jitter"), seed=7)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is untouched
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)
    assert torch.equal(out, augment_batch(x, ("crop", "flip", "jitter"), seed=7))
