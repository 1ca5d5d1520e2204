"""The model contract: ``ModelSpec`` describes an architecture, ``ImageClassifier`` runs it.

An ``ImageClassifier`` takes float32 images in [0, 1], shape (B, C, H, W), and returns logits
(B, num_classes). Resizing and mean/std normalisation are its first module (``preprocess``), so
attacks and defences work in pixel space. ``blocks()`` lists the backbone's stages in order, the
unit of "fine-tune the last k blocks" and of the layer-transfer (AnB) study.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from robustlab.budgets import check_budget
from robustlab.errors import UserError, check_range
from robustlab.models.small_cnns import CnnBackbone
from robustlab.specs import Count, spec, spec_fields

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
FROM_DATA = ("num_classes", "in_chans", "input_size")  # filled from the data by train_run


@spec("model")
class ModelSpec:
    """JSON-serialisable description of a classifier (goes into a run's config.json).

    ``num_classes``, ``in_chans`` and ``input_size`` (``FROM_DATA``) describe the data the model
    takes: ``train_run`` fills them from the data, so a spec written before the data is known
    leaves ``num_classes`` unset; a built model always has it.
    """

    arch: str = Field(
        min_length=1,
        description="architecture: a timm model name or a built-in (see 'robustlab models')",
    )
    num_classes: Count | None = Field(
        default=None, description="outputs of the head (from the data)"
    )
    in_chans: Count = Field(default=3, description="input channels (from the data)")
    input_size: Count = Field(default=96, description="side of the square [0, 1] input images")
    resize_to: Count | None = Field(
        default=None,
        description="resize inside the model (bilinear) to this side",
    )
    pretrained: str | None = Field(
        default=None,
        min_length=1,
        description="none | imagenet (online) | offline (tf_efficientnet_lite0) | path to a "
        "weights file",
    )
    mean: tuple[FiniteFloat, ...] | None = Field(
        default=None, description="per-channel normalisation mean; unset: the weights' own"
    )
    std: tuple[FiniteFloat, ...] | None = Field(
        default=None, description="per-channel normalisation std; unset: the weights' own"
    )
    drop_rate: float = Field(
        default=0.0, ge=0.0, lt=1.0, allow_inf_nan=False, description="dropout before the head"
    )

    def __post_init__(self) -> None:
        for name in ("num_classes", "in_chans", "input_size", "resize_to"):
            value = getattr(self, name)
            if value is not None:
                budget = {"num_classes": "classes", "in_chans": "in_chans"}.get(name, "image_side")
                check_budget(budget, value, f"model {name}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is None:
                continue
            if len(values) != self.in_chans:
                raise UserError(
                    f"model {name} needs one value per input channel ({self.in_chans}), "
                    f"got {len(values)}"
                )
            for item in values:
                if name == "std":
                    check_range("model std", item, 0.0, low_inclusive=False)
                else:
                    check_range("model mean", item)

    @property
    def backbone_size(self) -> int:
        """Side in pixels of the images the backbone sees (after the in-model resize)."""
        return self.resize_to or self.input_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Rebuild a saved spec from its JSON form, naming any unknown or missing field."""
        if not isinstance(data, Mapping):
            raise UserError(f"model spec must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(spec_fields(cls)))
        if unknown:
            raise UserError(f"unknown model spec field(s): {', '.join(map(str, unknown))}")
        missing = [name for name in ("arch", "num_classes") if data.get(name) is None]
        if missing:  # a saved model always knows its classes
            raise UserError(f"model spec lacks field(s): {', '.join(missing)}")
        return cls(**data)


class Preprocess(nn.Module):
    """Resize (optional) then normalise: (B, C, H, W) in [0, 1] -> (B, C, R, R) normalised.

    Buffers only, no parameters; mean/std are not saved in state dicts because the spec holds them.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], resize_to: int | None) -> None:
        super().__init__()
        self.resize_to = resize_to
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise UserError(
                f"model expects images shaped (B, {self.mean.shape[1]}, H, W), got {tuple(x.shape)}"
            )
        size = self.resize_to
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            # Antialiasing when shrinking avoids aliasing a large photo into noise.
            shrinking = x.shape[-2] > size or x.shape[-1] > size
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = [round(v, 4) for v in self.mean.flatten().tolist()]
        std = [round(v, 4) for v in self.std.flatten().tolist()]
        return f"resize_to={self.resize_to}, mean={mean}, std={std}"


class ClassifierHead(nn.Module):
    """Dropout then a linear layer: (B, F) features -> (B, K) logits."""

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.drop(features))


class ImageClassifier(nn.Module):
    """preprocess -> backbone -> head; takes [0, 1] images (B, C, H, W), returns logits (B, K).

    ``frozen_blocks``: how many leading blocks are frozen (see ``robustlab.models.freeze_blocks``);
    their BatchNorm layers stay in eval mode whenever the model is put in train mode.
    """

    def __init__(
        self,
        spec: ModelSpec,
        preprocess: nn.Module,
        backbone: nn.Module,
        head: nn.Module,
        num_features: int,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.num_features = num_features
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head
        self.frozen_blocks = 0
        self.channels_last = False

    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features (B, F) of [0, 1] images (B, C, H, W)."""
        x = self.preprocess(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes) of [0, 1] images (B, C, H, W)."""
        return self.head(self.features(x))

    def blocks(self) -> list[nn.Module]:
        """The backbone's stages in input-to-output order (parameter groups, not callables)."""
        return backbone_blocks(self.backbone)

    def frozen_modules(self) -> list[nn.Module]:
        """The leading blocks that are frozen (their BatchNorm statistics too)."""
        return self.blocks()[: self.frozen_blocks]

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                module.eval()
        return self


def to_channels_last(model: ImageClassifier) -> ImageClassifier:
    """Store weights and feed activations channels-last (NHWC), faster for conv nets on CPU."""
    model.to(memory_format=torch.channels_last)
    model.channels_last = True
    return model


def _group(children: Mapping[str, nn.Module], names: Sequence[str]) -> nn.ModuleList:
    """The named children that hold weights, as one block."""
    return nn.ModuleList(
        children[name]
        for name in names
        if name in children and any(True for _ in children[name].state_dict())
    )


def backbone_blocks(backbone: nn.Module) -> list[nn.Module]:
    """Stages of a built-in or timm backbone, in order.

    EfficientNet/MobileNet: [conv_stem+bn1, *blocks, conv_head+bn2]; ResNet: [conv1+bn1,
    layer1..4]; built-ins: one block per conv layer (and hidden dense layer); other timm models:
    timm's own coarse parameter groups (``group_matcher``), else the children holding weights.
    """
    if isinstance(backbone, CnnBackbone):
        return list(backbone.stages)
    children = dict(backbone.named_children())
    if "conv_stem" in children and isinstance(children.get("blocks"), nn.Sequential):
        stem = _group(children, ("conv_stem", "bn1"))
        head = _group(children, ("conv_head", "bn2", "norm_head"))
        return [stem, *children["blocks"], *([head] if len(head) else [])]
    if "conv1" in children and "layer1" in children:
        stem = _group(children, ("conv1", "bn1"))
        layers = [children[f"layer{i}"] for i in range(1, 5) if f"layer{i}" in children]
        return [stem, *layers]
    matcher = getattr(backbone, "group_matcher", None)
    if callable(matcher):
        from timm.models import group_modules

        groups = group_modules(backbone, matcher(coarse=True))
        return [
            nn.ModuleList(backbone.get_submodule(name) for name in names)
            for _, names in sorted(groups.items())
        ]
    return [child for child in children.values() if any(True for _ in child.state_dict())]
