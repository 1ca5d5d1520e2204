"""The input contract of a foreign model, and the first module that applies it.

robustlab feeds every model float32 images in [0, 1], (B, C, H, W). A model trained elsewhere
expects its own size, channel order, pixel scale, mean/std and memory layout; ``ForeignPreprocess``
turns robustlab's images into exactly that, inside the model, so attacks still work in [0, 1]
pixel space and epsilon keeps its meaning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.errors import UserError, check_range

# pixel scale name -> (multiplier, offset) applied to [0, 1] pixels
SCALES: dict[str, tuple[float, float]] = {"0-1": (1.0, 0.0), "0-255": (255.0, 0.0), "-1-1": (2.0, -1.0)}
CHANNEL_ORDERS = ("rgb", "bgr")
LAYOUTS = ("nchw", "nhwc")


@dataclass(frozen=True)
class InputContract:
    """What the foreign model expects (goes into config.json under ``foreign.contract``).

    size: side of the square images the model takes (robustlab resizes to it, bilinear).
    channels: 1 (grey) or 3.
    channel_order: 'rgb' or 'bgr' (robustlab's images are RGB).
    scale: pixel range the model was trained on: '0-1', '0-255' or '-1-1'.
    mean, std: per-channel normalisation applied after scaling, in the model's pixel units.
    layout: 'nchw' (PyTorch, most ONNX) or 'nhwc' (Keras, TensorFlow exports).
    """

    size: int
    channels: int = 3
    channel_order: str = "rgb"
    scale: str = "0-1"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str = "nchw"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise UserError(f"input size must be a whole number >= 1, got {self.size!r}")
        if self.channels not in (1, 3):
            raise UserError(f"input channels must be 1 or 3, got {self.channels!r}")
        for name, choices in (
            ("channel_order", CHANNEL_ORDERS),
            ("scale", tuple(SCALES)),
            ("layout", LAYOUTS),
        ):
            if getattr(self, name) not in choices:
                raise UserError(
                    f"input {name.replace('_', ' ')} must be one of {', '.join(choices)}, "
                    f"got {getattr(self, name)!r}"
                )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            values = tuple(float(v) for v in value)
            if len(values) not in (1, self.channels):
                raise UserError(
                    f"input {name} needs 1 or {self.channels} values, got {len(values)}"
                )
            if name == "std":
                for item in values:
                    check_range("input std", item, 0.0, None, low_inclusive=False)
            object.__setattr__(self, name, values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputContract:
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"unknown input contract field(s): {', '.join(unknown)}")
        return cls(**data)


class ForeignPreprocess(nn.Module):
    """[0, 1] RGB (B, C, H, W) -> what the foreign model takes: resized, reordered, scaled,
    normalised, and permuted to NHWC where the model wants that. Buffers only, no parameters."""

    def __init__(self, contract: InputContract) -> None:
        super().__init__()
        self.contract = contract
        multiplier, offset = SCALES[contract.scale]
        mean = torch.tensor(contract.mean or (0.0,), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(contract.std or (1.0,), dtype=torch.float32).view(1, -1, 1, 1)
        # One affine map per channel: ((x * multiplier + offset) - mean) / std.
        self.register_buffer("weight", multiplier / std, persistent=False)
        self.register_buffer("bias", (offset - mean) / std, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        contract = self.contract
        if x.dim() != 4 or x.shape[1] != contract.channels:
            raise UserError(
                f"model expects images shaped (B, {contract.channels}, H, W), got {tuple(x.shape)}"
            )
        if tuple(x.shape[-2:]) != (contract.size, contract.size):
            shrinking = x.shape[-2] > contract.size or x.shape[-1] > contract.size
            x = F.interpolate(
                x, size=(contract.size, contract.size), mode="bilinear", align_corners=False,
                antialias=shrinking,
            )
        if contract.channel_order == "bgr" and contract.channels == 3:
            x = x.flip(1)
        x = x * self.weight + self.bias
        if contract.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        return x

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.contract.to_dict().items())
