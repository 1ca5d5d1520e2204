"""Built-in small CNNs from the source studies, as backbones: normalised (B, C, S, S) -> (B, F).

- ``simple-cnn``: the leaf study's Keras model (Conv 32 5x5, Conv 16 3x3, Conv 8 3x3, all 'same'
  + ReLU, Flatten; its Dense layer is the head). The study fed images/255: mean 0, std 1.
- ``face-cnn``: the face study's gender CNN for 48x48 grey images (conv 3 5x5, maxpool 2, conv 6
  5x5, maxpool 2, conv 12 5x5, maxpool 2, flatten; fc 2 is the head), 'same' padding + ReLU. The
  study fed (pixel - 128) / 256, i.e. mean 0.5, std 1 on [0, 1] pixels.
- ``small-cnn``: the NSL Fashion-MNIST tutorial's CNN (conv 32 3x3 + ReLU, maxpool, conv 64 3x3 +
  ReLU, maxpool, flatten, dense 128 + ReLU; dense K is the head), mean 0.5, std 0.5.
- ``nsl-cnn``: the NSL adversarial-regularisation MNIST tutorial's CNN (``conv_filters = [32, 64,
  64]``, 3x3 'valid' + ReLU, a 2x2 maxpool between them, flatten, dense 64 + ReLU; dense K is
  the head). The tutorial fed images/255: mean 0, std 1.

Flatten sizes follow the input side S, so the same architecture works at 28, 48 or 96 pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from robustlab.errors import UserError


class CnnBackbone(nn.Module):
    """A stack of stages then flatten; each stage (a conv layer, or the hidden dense) is a block."""

    def __init__(self, stages: Sequence[nn.Module], num_features: int) -> None:
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x).flatten(1)  # (B, F)


def _conv(in_chans: int, out_chans: int, kernel: int, *, same: bool, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_chans, out_chans, kernel, padding="same" if same else 0),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _check_size(arch: str, size: int, minimum: int) -> None:
    if size < minimum:
        raise UserError(f"{arch} needs images of at least {minimum} pixels, got {size}")


def simple_cnn(in_chans: int, size: int) -> CnnBackbone:
    """Leaf study CNN: 'same' convs keep the side, so F = 8 * size * size."""
    stages = [
        _conv(in_chans, 32, 5, same=True, pool=False),
        _conv(32, 16, 3, same=True, pool=False),
        _conv(16, 8, 3, same=True, pool=False),
    ]
    return CnnBackbone(stages, 8 * size * size)


def face_cnn(in_chans: int, size: int) -> CnnBackbone:
    """Face study CNN: three 'same' convs each halved by a max-pool, F = 12 * (size // 8)^2."""
    _check_size("face-cnn", size, 8)
    stages = [
        _conv(in_chans, 3, 5, same=True, pool=True),
        _conv(3, 6, 5, same=True, pool=True),
        _conv(6, 12, 5, same=True, pool=True),
    ]
    side = size // 2 // 2 // 2
    return CnnBackbone(stages, 12 * side * side)


def small_cnn(in_chans: int, size: int) -> CnnBackbone:
    """NSL tutorial CNN: two valid 3x3 convs with max-pools, then a 128-unit hidden layer."""
    _check_size("small-cnn", size, 10)
    side = ((size - 2) // 2 - 2) // 2
    stages = [
        _conv(in_chans, 32, 3, same=False, pool=True),
        _conv(32, 64, 3, same=False, pool=True),
        nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(inplace=True)),
    ]
    return CnnBackbone(stages, 128)


def nsl_cnn(in_chans: int, size: int) -> CnnBackbone:
    """NSL MNIST tutorial CNN: three valid 3x3 convs, pools between them, a 64-unit hidden layer."""
    _check_size("nsl-cnn", size, 18)
    side = ((size - 2) // 2 - 2) // 2 - 2
    stages = [
        _conv(in_chans, 32, 3, same=False, pool=True),
        _conv(32, 64, 3, same=False, pool=True),
        _conv(64, 64, 3, same=False, pool=False),
        nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 64), nn.ReLU(inplace=True)),
    ]
    return CnnBackbone(stages, 64)


@dataclass(frozen=True)
class BuiltinArch:
    """A built-in architecture and the conventions of the study it comes from."""

    build: Callable[[int, int], CnnBackbone]  # (in_chans, side in pixels) -> backbone
    mean: float  # same value for every channel, on [0, 1] pixels
    std: float
    input_size: int  # the side the source study used (our data sets' native side for leaves)
    in_chans: int
    family: str


BUILTINS: dict[str, BuiltinArch] = {
    "simple-cnn": BuiltinArch(simple_cnn, 0.0, 1.0, 96, 3, "CNN (leaf study)"),
    "face-cnn": BuiltinArch(face_cnn, 0.5, 1.0, 48, 1, "CNN (face study)"),
    "small-cnn": BuiltinArch(small_cnn, 0.5, 0.5, 28, 1, "CNN (Fashion-MNIST, NSL)"),
    "nsl-cnn": BuiltinArch(nsl_cnn, 0.0, 1.0, 28, 1, "CNN (MNIST, NSL tutorial)"),
}
