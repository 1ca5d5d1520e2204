"""Tiny weightless models and inputs for the attack tests (no checkpoints, no data sets)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from robustlab.attacks import get_attack, list_attacks
from robustlab.attacks.base import Attack

NUM_CLASSES = 4

# small budgets so the whole registry runs in seconds
FAST: dict[str, dict] = {
    "apgd": {"steps": 5},
    "apgd-l2": {"steps": 5},
    "apgd-t": {"steps": 5, "top_k": 2},
    "apgd-t-l2": {"steps": 5, "top_k": 2},
    "autoattack": {"steps": 4, "top_k": 2, "queries": 20},
    "fab": {"steps": 5, "top_k": 2},
    "square": {"queries": 20},
    "square-l2": {"queries": 20},
    "cw-l2": {"steps": 25, "binary_search_steps": 4, "initial_const": 0.1, "lr": 0.05},
    "filter": {"iterations": 25},
    "ifgsm": {"steps": 5},
    "mifgsm": {"steps": 5},
    "minimal": {"search_steps": 5},
    "pgd": {"steps": 5},
    "pgd-l2": {"steps": 5},
}
# an epsilon per norm that is large enough to fool the tiny model often
EPS = {"linf": 0.05, "l2": 0.5}
ALL = list_attacks()
BOUNDED = [name for name in ALL if get_attack(name).norm != "none"]
RANDOM = [
    "pgd",
    "pgd-l2",
    "sign-noise",
    "gaussian-noise",
    "apgd",
    "apgd-l2",
    "square",
]  # outputs depend on the seed


class TinyCNN(nn.Module):
    """Two convolutions on (B, 3, 16, 16), with BatchNorm and dropout so modes matter."""

    def __init__(self, classes: int = NUM_CLASSES, channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(0.2),
        )
        self.head = nn.Linear(16 * 8 * 8, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features((x - 0.5) * 4))  # normalisation inside the model


class TupleOutput(nn.Module):
    """Returns (logits, features), like models with auxiliary outputs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner(x), x.flatten(1)


class DictOutput(TupleOutput):
    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        return {"features": x.flatten(1), "logits": self.inner(x)}


class CountingModel(nn.Module):
    """Records the batch size of every forward and whether the input needed a gradient."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((x.shape[0], x.requires_grad))
        return self.inner(x)


def make_model(seed: int = 0, classes: int = NUM_CLASSES) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(classes).eval()


def make_attack(name: str, **settings) -> Attack:
    """The registered attack with the test budget; ``eps`` defaults per norm."""
    cls_norm = get_attack(name).norm
    base = dict(FAST.get(name, {}))
    if cls_norm in EPS:
        base["eps"] = EPS[cls_norm]
    return get_attack(name, **{**base, **settings})


def target_for(name: str, y: Tensor) -> Tensor | None:
    """A target for attacks that need one (the next class), else None."""
    return (y + 1) % NUM_CLASSES if get_attack(name).requires_target else None


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and far faster on a shared, loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model() -> TinyCNN:
    return make_model()


@pytest.fixture
def batch(model: TinyCNN) -> tuple[Tensor, Tensor]:
    """12 random images labelled with the model's own predictions (clean accuracy 1)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(12, 3, 16, 16, generator=generator)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y


@pytest.fixture
def attack_factory() -> Callable[..., Attack]:
    return make_attack
