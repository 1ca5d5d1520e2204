"""Saving adversarial examples: exact float tensors (safetensors) plus 8-bit PNGs, re-checked.

Writing a PNG rounds every pixel to a multiple of 1/255, which can undo a perturbation smaller
than half a grey level or push a barely-adversarial image back across the decision boundary.
``save_adversarials`` therefore reloads every PNG it wrote, rescores it with the model and
records which images are still adversarial after quantisation.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as safetensors_save
from torch import nn

from robustlab.errors import UserError
from robustlab.evaluation.accuracy import DEFAULT_BATCH_SIZE, predict_logits
from robustlab.io import write_bytes, write_json

log = logging.getLogger(__name__)

ADVERSARIALS_FORMAT = "robustlab-adversarials"


def quantise(images: torch.Tensor) -> torch.Tensor:
    """What an 8-bit image file stores: [0, 1] floats rounded to the nearest k/255."""
    return (images.clamp(0, 1) * 255).round() / 255


def png_bytes(image: torch.Tensor) -> bytes:
    """Encode one ``(C, H, W)`` [0, 1] image (C = 1 or 3) as an 8-bit PNG."""
    array = (quantise(image.detach().cpu()) * 255).to(torch.uint8).numpy()
    array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def load_png(path: str | os.PathLike[str], channels: int) -> torch.Tensor:
    """Read a PNG back as a ``(C, H, W)`` float32 tensor in [0, 1]."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(image, dtype=np.float32) / 255
    except OSError as error:
        raise UserError(f"cannot read image {path}: {error}") from None
    return torch.from_numpy(array[None] if channels == 1 else np.moveaxis(array, -1, 0).copy())


@dataclass(frozen=True)
class AdversarialSet:
    """Adversarial images beside their originals, as ``save_adversarials`` writes them."""

    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1], the originals
    x_adv: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) true labels
    classes: Sequence[str]  # class names, index = label
    indices: torch.Tensor | None = None  # (N,) positions in the evaluated split; None: 0..N-1
    eps: float | None = None  # the budget they were crafted with (pixel units)

    def __post_init__(self) -> None:
        if self.x.shape != self.x_adv.shape or len(self.x) != len(self.y):
            raise ValueError(
                f"shape mismatch: x {tuple(self.x.shape)}, x_adv {tuple(self.x_adv.shape)}, "
                f"y {tuple(self.y.shape)}"
            )

    def positions(self) -> torch.Tensor:
        """``(N,)`` int64 positions in the evaluated split."""
        return torch.arange(len(self.x)) if self.indices is None else self.indices.long()


def save_adversarials(
    out_dir: str | os.PathLike[str],
    model: nn.Module,
    adversarials: AdversarialSet,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Write ``adversarials.safetensors``, ``png/<index>.png`` and ``adversarials.json``.

    Returns the JSON summary: counts of images misclassified by ``model`` as floats and after
    the PNG round trip, and one entry per image.
    """
    out_dir = Path(out_dir)
    _write_tensors(out_dir / "adversarials.safetensors", adversarials)
    names = [f"png/{int(index):05d}.png" for index in adversarials.positions()]
    for name, image in zip(names, adversarials.x_adv, strict=True):
        write_bytes(out_dir / name, png_bytes(image))
    channels = adversarials.x.shape[1]
    reloaded = torch.stack([load_png(out_dir / name, channels) for name in names])
    pred_float = predict_logits(model, adversarials.x_adv, batch_size).argmax(1)
    pred_png = predict_logits(model, reloaded, batch_size).argmax(1)
    images = _image_entries(adversarials, names, pred_float, pred_png)
    n_float = sum(image["adversarial_float"] for image in images)
    n_png = sum(image["adversarial_png"] for image in images)
    lost = sum(image["adversarial_float"] and not image["adversarial_png"] for image in images)
    summary = {
        "format": ADVERSARIALS_FORMAT,
        "format_version": 1,
        "eps": adversarials.eps,
        "n": len(images),
        "adversarial_float": n_float,
        "adversarial_png": n_png,
        "lost_by_quantisation": lost,
        "safetensors": "adversarials.safetensors",
        "classes": list(adversarials.classes),
        "images": images,
    }
    write_json(out_dir / "adversarials.json", summary)
    if lost:
        log.warning(
            "%d of %d adversarial images stop being adversarial once saved as 8-bit PNG",
            lost,
            n_float,
        )
    return summary


def _write_tensors(path: Path, adversarials: AdversarialSet) -> None:
    """The exact float tensors, labels and positions, with eps and classes as metadata."""
    # clone: safetensors refuses tensors that share memory (x_adv may be x where nothing changed)
    tensors = {
        "original": adversarials.x.detach().cpu().float().clone(),
        "adversarial": adversarials.x_adv.detach().cpu().float().clone(),
        "labels": adversarials.y.cpu().long().clone(),
        "indices": adversarials.positions().cpu().clone(),
    }
    metadata = {
        "eps": json.dumps(adversarials.eps),
        "classes": json.dumps(list(adversarials.classes)),
    }
    write_bytes(path, safetensors_save(tensors, metadata=metadata))


def _image_entries(
    adversarials: AdversarialSet,
    names: Sequence[str],
    pred_float: torch.Tensor,
    pred_png: torch.Tensor,
) -> list[dict[str, Any]]:
    """One JSON entry per image: its PNG and whether it is adversarial before and after it."""
    y, indices = adversarials.y.cpu(), adversarials.positions()
    return [
        {
            "index": int(indices[k]),
            "label": int(y[k]),
            "png": names[k],
            "pred_float": int(pred_float[k]),
            "pred_png": int(pred_png[k]),
            "adversarial_float": bool(pred_float[k] != y[k]),
            "adversarial_png": bool(pred_png[k] != y[k]),
        }
        for k in range(len(y))
    ]
