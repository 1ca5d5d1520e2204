"""Tiny sources written by the data tests (imported as ``data_helpers``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def class_images(
    n: int, label: int, size: tuple[int, int] = (6, 5), channels: int = 3
) -> np.ndarray:
    """``n`` uint8 images whose first pixel encodes ``label`` and second pixel the index."""
    height, width = size
    rng = np.random.default_rng(label * 1000 + n)
    images = rng.integers(0, 256, size=(n, height, width, channels), dtype=np.uint8)
    images[:, 0, 0, :] = label * 40
    images[:, 0, 1, :] = np.arange(n)[:, None] % 256
    return images if channels > 1 else images[..., 0]


def write_folder(
    root: Path,
    counts: dict[str, int],
    size: tuple[int, int] = (6, 5),
    channels: int = 3,
    fmt: str = "png",
) -> dict[str, np.ndarray]:
    """ROOT/<class>/<i>.png for each class; returns the arrays written per class."""
    written = {}
    for label, (name, n) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        images = class_images(n, label, size, channels)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{i:03d}.{fmt}")
        written[name] = images
    return written


def labelled_arrays(counts: list[int], size: tuple[int, int] = (6, 5), channels: int = 3):
    """Images (N, H, W, C) uint8 and labels (N,) for the given per-class counts."""
    images = np.concatenate(
        [class_images(n, label, size, channels) for label, n in enumerate(counts)]
    )
    labels = np.concatenate([np.full(n, label, dtype=np.int64) for label, n in enumerate(counts)])
    return images, labels


def write_npz(path: Path, images, labels, **extra) -> Path:
    np.savez_compressed(path, images=images, labels=labels, **extra)
    return path


def write_npy_dir(folder: Path, images, labels) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    return folder


def pixel_set(images) -> set[bytes]:
    """Each image (C, H, W float in [0,1]) as uint8 bytes in (H, W, C) order, for comparison."""
    arrays = (images * 255).round().to(dtype=torch.uint8).permute(0, 2, 3, 1)
    return {a.numpy().tobytes() for a in arrays}
