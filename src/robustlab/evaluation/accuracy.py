"""Clean accuracy: batched prediction, per-class accuracy and the confusion matrix.

Images follow the project convention: float32 ``(N, C, H, W)`` in ``[0, 1]``; labels int64
``(N,)``. Models run on their own device; results come back on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from robustlab.attacks import as_logits_model
from robustlab.data import stream
from robustlab.devices import to_device
from robustlab.errors import UserError

if TYPE_CHECKING:
    from robustlab.data import ImageSet

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256


def require_eval_mode(model: nn.Module, name: str = "model") -> None:
    """Refuse a model in train mode: dropout and batch-norm statistics would make every
    evaluation random and let batch composition leak into predictions."""
    if model.training:
        raise UserError(f"{name} is in train mode; call model.eval() before evaluating it")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a parameter-free model)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE
) -> torch.Tensor:
    """Logits ``(N, K)`` float32 on the CPU for images ``(N, C, H, W)`` in [0, 1]."""
    require_eval_mode(model)
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    forward = as_logits_model(model)
    device = model_device(model)
    parts = [slice(start, start + batch_size) for start in range(0, len(images), batch_size)]
    outputs = [forward(to_device(x, device)).float().cpu() for x in stream.batches(images, parts)]
    if not outputs:
        raise UserError("no images to evaluate (the split is empty)")
    return torch.cat(outputs)


def confusion_matrix(
    labels: torch.Tensor, predictions: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """``(K, K)`` int64 counts: row = true class, column = predicted class."""
    index = labels.long() * num_classes + predictions.long()
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def metrics_from_predictions(
    labels: torch.Tensor, predictions: torch.Tensor, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix as a JSON-able dict.

    Keys: ``n``, ``correct``, ``accuracy`` (fraction in [0, 1]), ``classes``, ``per_class``
    (list of ``{"class", "n", "correct", "accuracy"}``; accuracy is None for a class with no
    images) and ``confusion`` (rows true, columns predicted).
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    confusion = confusion_matrix(labels, predictions, len(classes))
    per_class = []
    for k, name in enumerate(classes):
        n_k = int(confusion[k].sum())
        correct_k = int(confusion[k, k])
        per_class.append(
            {
                "class": str(name),
                "n": n_k,
                "correct": correct_k,
                "accuracy": correct_k / n_k if n_k else None,
            }
        )
    correct = int(confusion.diagonal().sum())
    return {
        "n": len(labels),
        "correct": correct,
        "accuracy": correct / len(labels) if len(labels) else None,
        "classes": [str(name) for name in classes],
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def clean_metrics(
    model: nn.Module, imageset: ImageSet, batch_size: int = DEFAULT_BATCH_SIZE
) -> dict[str, Any]:
    """Clean accuracy of ``model`` on an ``ImageSet``; see ``metrics_from_predictions`` for keys."""
    logits = predict_logits(model, imageset.images, batch_size)
    if logits.shape[1] != len(imageset.classes):
        raise UserError(
            f"model has {logits.shape[1]} outputs but the data set has {len(imageset.classes)} classes"
        )
    return metrics_from_predictions(imageset.labels, logits.argmax(1), imageset.classes)
