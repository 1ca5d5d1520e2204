"""Tiny models for the defence tests: BatchNorm included, so the BN policy is exercised."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn


class TinyNet(nn.Module):
    """(B, C, 8, 8) in [0, 1] -> (B, K) logits, shaped like an ImageClassifier
    (``backbone``, ``head``, ``features``, ``blocks``) so ``fit``'s strategies apply."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(8 * width, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def blocks(self) -> list[nn.Module]:
        return [self.backbone[:3], self.backbone[3:]]


@pytest.fixture
def tiny_net():
    """Factory of seeded ``TinyNet``s (same arguments, same weights)."""

    def make(**kwargs) -> TinyNet:
        torch.manual_seed(0)
        return TinyNet(**kwargs)

    return make


@pytest.fixture
def batch() -> tuple[Tensor, Tensor]:
    """16 random grey 8x8 images in [0, 1] with labels in 0..9."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=generator)
    y = torch.randint(0, 10, (16,), generator=generator)
    return x, y


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread is as fast and avoids spin-waiting threads on
    a busy machine (measured 8x slower with 2 threads while other jobs share the 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
