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


def save_adversarials(
    out_dir: str | os.PathLike[str],
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    classes: Sequence[str],
    *,
    indices: torch.Tensor | None = None,
    eps: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Write ``adversarials.safetensors``, ``png/<index>.png`` and ``adversarials.json``.

    ``x``/``x_adv``: ``(N, C, H, W)`` float32 in [0, 1]; ``y``: ``(N,)`` true labels;
    ``indices``: ``(N,)`` positions in the evaluated split. Returns the JSON summary: counts of
    images misclassified as floats and after the PNG round trip, and one entry per image.
    """
    if x.shape != x_adv.shape or len(x) != len(y):
        raise ValueError(
            f"shape mismatch: x {tuple(x.shape)}, x_adv {tuple(x_adv.shape)}, y {tuple(y.shape)}"
        )
    out_dir = Path(out_dir)
    indices = torch.arange(len(x)) if indices is None else indices.long()
    # clone: safetensors refuses tensors that share memory (x_adv may be x where nothing changed)
    tensors = {
        "original": x.detach().cpu().float().clone(),
        "adversarial": x_adv.detach().cpu().float().clone(),
        "labels": y.cpu().long().clone(),
        "indices": indices.cpu().clone(),
    }
    metadata = {"eps": json.dumps(eps), "classes": json.dumps(list(classes))}
    write_bytes(out_dir / "adversarials.safetensors", safetensors_save(tensors, metadata=metadata))

    names = [f"png/{int(index):05d}.png" for index in indices]
    for name, image in zip(names, x_adv, strict=True):
        write_bytes(out_dir / name, png_bytes(image))
    reloaded = torch.stack([load_png(out_dir / name, x.shape[1]) for name in names])

    pred_float = predict_logits(model, x_adv, batch_size).argmax(1)
    pred_png = predict_logits(model, reloaded, batch_size).argmax(1)
    y = y.cpu()
    images = [
        {
            "index": int(indices[k]),
            "label": int(y[k]),
            "png": names[k],
            "pred_float": int(pred_float[k]),
            "pred_png": int(pred_png[k]),
            "adversarial_float": bool(pred_float[k] != y[k]),
            "adversarial_png": bool(pred_png[k] != y[k]),
        }
        for k in range(len(x))
    ]
    n_float = sum(image["adversarial_float"] for image in images)
    n_png = sum(image["adversarial_png"] for image in images)
    lost = sum(image["adversarial_float"] and not image["adversarial_png"] for image in images)
    summary = {
        "format": ADVERSARIALS_FORMAT,
        "format_version": 1,
        "eps": eps,
        "n": len(images),
        "adversarial_float": n_float,
        "adversarial_png": n_png,
        "lost_by_quantisation": lost,
        "safetensors": "adversarials.safetensors",
        "classes": list(classes),
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
