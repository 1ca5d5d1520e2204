from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.data import DataSplits, ImageSet
from robustlab.errors import UserError
from robustlab.evaluation import clean_metrics, confusion_matrix, metrics_from_predictions


def test_metrics_from_predictions_by_hand() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    preds = torch.tensor([0, 1, 1, 1, 0, 2])
    metrics = metrics_from_predictions(labels, preds, ["a", "b", "c"])
    assert metrics["n"] == 6 and metrics["correct"] == 4
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["confusion"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    per_class = {c["class"]: c for c in metrics["per_class"]}
    assert per_class["b"]["accuracy"] == pytest.approx(2 / 3)
    assert per_class["c"] == {"class": "c", "n": 1, "correct": 1, "accuracy": 1.0}


def test_class_without_images_has_no_accuracy() -> None:
    metrics = metrics_from_predictions(torch.tensor([0, 0]), torch.tensor([0, 1]), ["a", "b"])
    assert metrics["per_class"][1]["accuracy"] is None
    assert confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 2).sum() == 2


def test_clean_metrics_on_a_fitted_model(target_model: nn.Module, digits: DataSplits) -> None:
    metrics = clean_metrics(target_model, digits.test, batch_size=50)
    assert metrics["n"] == len(digits.test.labels)
    assert metrics["accuracy"] > 0.8  # fitted, far above the 10 % of chance
    confusion = torch.tensor(metrics["confusion"])
    assert torch.equal(confusion.sum(1), torch.bincount(digits.test.labels, minlength=10))
    weighted = sum(c["accuracy"] * c["n"] for c in metrics["per_class"]) / metrics["n"]
    assert weighted == pytest.approx(metrics["accuracy"])
    # Batch size must not change the answer.
    assert (
        clean_metrics(target_model, digits.test, batch_size=7)["confusion"] == metrics["confusion"]
    )


def test_model_in_train_mode_is_refused(target_model: nn.Module, digits: DataSplits) -> None:
    target_model.train()
    try:
        with pytest.raises(UserError, match="train mode"):
            clean_metrics(target_model, digits.test)
    finally:
        target_model.eval()


def test_class_count_mismatch_is_a_user_error(target_model: nn.Module, digits: DataSplits) -> None:
    three = ImageSet(digits.test.images[:5], digits.test.labels[:5] % 3, ("a", "b", "c"))
    with pytest.raises(UserError, match="10 outputs but the data set has 3 classes"):
        clean_metrics(target_model, three)
