"""Opt-in training data augmentation (off by default): random resized crop, flip, colour jitter.

torchvision ``transforms.v2``, drawn per image from a generator seeded by (run seed, epoch,
batch, rank) inside ``fork_rng``: a run is reproducible and resumable, and the global random
stream (dropout, attack random starts) is the one a run without augmentation sees. Settings
follow timm's training defaults (crop scale 0.08..1, flip p=0.5, jitter 0.4).
"""

from __future__ import annotations

import typing

import torch
from torch import Tensor

from robustlab.training.config import Augmentation

AUGMENTATIONS: tuple[str, ...] = typing.get_args(Augmentation)


def _pipeline(names: tuple[str, ...], size: tuple[int, int]):  # -> v2.Compose
    from torchvision.transforms import v2

    steps = []
    if "crop" in names:
        steps.append(v2.RandomResizedCrop(size, antialias=True))
    if "flip" in names:
        steps.append(v2.RandomHorizontalFlip())
    if "jitter" in names:
        steps.append(v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4))
    return v2.Compose(steps)


def augment_batch(x: Tensor, names: tuple[str, ...], seed: int) -> Tensor:
    """Each image of ``x`` (B, C, H, W) float32 in [0, 1] randomly transformed; same shape."""
    if not names:
        return x
    transform = _pipeline(names, (x.shape[-2], x.shape[-1]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([transform(image) for image in x])
    return out.clamp_(0.0, 1.0).contiguous(memory_format=torch.preserve_format)
