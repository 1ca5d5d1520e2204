"""``create_model(spec)``: any timm model or a built-in CNN, with a fresh head and the right
normalisation; ``list_architectures()`` for ``robustlab models``."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.budgets import check_budget
from robustlab.errors import UserError, suggestion
from robustlab.models.classifier import ClassifierHead, ImageClassifier, ModelSpec, Preprocess
from robustlab.models.pretrained import (
    OFFLINE_ARCH,
    OFFLINE_MEAN_STD,
    imagenet_backbone,
    load_backbone_weights,
    load_foreign_weights,
    offline_state_dict,
)
from robustlab.models.small_cnns import BUILTINS

log = logging.getLogger(__name__)

PRETRAINED_NAMES = ("imagenet", "offline")
# Backbones the source documents use online (MobileNetV2, InceptionV3, VGG-19) plus common ones,
# with their family names.
ONLINE_ARCHS = {
    "mobilenetv2_100": "MobileNetV2",
    "inception_v3": "InceptionV3",
    "vgg19": "VGG",
    "resnet18": "ResNet",
    "resnet50": "ResNet",
    "efficientnet_b0": "EfficientNet",
}
ANY_TIMM_NOTE = "any timm model name works too (random init, or pretrained='imagenet' online)"


def _base_name(arch: str) -> str:
    """timm names may carry a weights tag: 'resnet18.a1_in1k' -> 'resnet18'."""
    return arch.split(".", 1)[0]


def _check_pretrained(spec: ModelSpec) -> None:
    """Validate ``spec.pretrained`` before building anything (fast, clear failures)."""
    source = spec.pretrained
    if source is None:
        return
    builtin = spec.arch in BUILTINS
    if source in PRETRAINED_NAMES and builtin:
        raise UserError(
            f"built-in '{spec.arch}' has no {source} weights; use pretrained=None or a weights file"
        )
    if source == "offline" and _base_name(spec.arch) != OFFLINE_ARCH:
        raise UserError(
            f"pretrained='offline' exists only for {OFFLINE_ARCH}, not '{spec.arch}'; use "
            "'imagenet' (online) or a path to a weights file"
        )
    if source not in PRETRAINED_NAMES and not Path(source).is_file():
        raise UserError(
            f"pretrained '{source}' is neither 'imagenet', 'offline' nor an existing weights "
            f"file{suggestion(source, PRETRAINED_NAMES)}"
        )


def _builtin_backbone(spec: ModelSpec) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    arch = BUILTINS[spec.arch]
    backbone = arch.build(spec.in_chans, spec.backbone_size)
    if spec.pretrained is not None:
        state = load_foreign_weights(spec.pretrained)
        load_backbone_weights(backbone, state, source=spec.pretrained, classifier_keys=("head",))
    return backbone, (arch.mean,) * spec.in_chans, (arch.std,) * spec.in_chans


def _timm_backbone(spec: ModelSpec) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    import timm

    if spec.pretrained == "imagenet":
        backbone = imagenet_backbone(spec.arch, spec.in_chans)
    else:
        backbone = timm.create_model(
            spec.arch, pretrained=False, num_classes=0, in_chans=spec.in_chans
        )
    cfg = backbone.pretrained_cfg
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    heads += ("classifier", "fc", "head", "last_linear")
    if spec.pretrained == "offline":
        load_backbone_weights(
            backbone, offline_state_dict(), source="offline package", classifier_keys=heads
        )
        mean, std = (OFFLINE_MEAN_STD[0],) * 3, (OFFLINE_MEAN_STD[1],) * 3
    else:
        if spec.pretrained not in (None, "imagenet"):
            state = load_foreign_weights(spec.pretrained)
            load_backbone_weights(backbone, state, source=spec.pretrained, classifier_keys=heads)
        mean, std = tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3))
    return backbone, _match_channels(mean, spec.in_chans), _match_channels(std, spec.in_chans)


def _match_channels(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    """RGB statistics for a model with another channel count (grey: the channel average)."""
    if len(values) == in_chans:
        return values
    return (sum(values) / len(values),) * in_chans


def create_model(spec: ModelSpec) -> ImageClassifier:
    """Build the classifier ``spec`` describes: preprocess -> backbone -> fresh linear head.

    timm models: ``timm.create_model(arch, num_classes=0, in_chans=...)`` (pooled features).
    Pretrained weights (``spec.pretrained``) go into the backbone only; the head is always new
    (random init from the caller's torch seed). Unknown names raise a UserError with a suggestion.
    """
    if spec.arch not in BUILTINS:
        import timm

        if not timm.is_model(spec.arch):
            # Suggest from every timm name, but list only the curated ones (timm has ~1,300).
            close = suggestion(spec.arch, [*BUILTINS, *timm.list_models()])
            known = ", ".join([*BUILTINS, OFFLINE_ARCH, *ONLINE_ARCHS])
            raise UserError(
                f"unknown architecture '{spec.arch}'{close}; choose from: {known}, or any timm "
                "model name (see 'robustlab models')"
            )
    if spec.num_classes is None:
        raise UserError(
            f"model {spec.arch}: num_classes is unset (train_run fills it from the data)"
        )
    _check_pretrained(spec)
    check_model_cost(spec)
    return _build(spec)


def _build(spec: ModelSpec) -> ImageClassifier:
    if spec.arch in BUILTINS:
        backbone, mean, std = _builtin_backbone(spec)
    else:
        backbone, mean, std = _timm_backbone(spec)
    # timm models with pre-logits layers (MobileNetV3, VGG) put out head_hidden_size features
    num_features = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
    preprocess = Preprocess(spec.mean or mean, spec.std or std, spec.resize_to)
    head = ClassifierHead(num_features, spec.num_classes, spec.drop_rate)
    log.debug("created %s: %d features -> %d classes", spec.arch, num_features, spec.num_classes)
    return ImageClassifier(spec, preprocess, backbone, head, num_features)


def check_model_cost(spec: ModelSpec) -> None:
    """Build ``spec`` on the meta device (no memory, no random numbers drawn) and push one
    zero image through it: refuses a model whose parameters or per-image activations exceed
    their budgets, or that cannot take the images at all (a CNN too deep for 8 px), before
    anything is allocated or the first training step runs."""
    activations = 0

    def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal activations
        activations += output.numel() if isinstance(output, torch.Tensor) else 0

    side, what = spec.input_size, f"model {spec.arch}"
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            # before the data is known the class count is too: one output is the smallest head
            blank = dataclasses.replace(spec, pretrained=None, num_classes=spec.num_classes or 1)
            model = _build(blank)
        except (RuntimeError, NotImplementedError) as error:  # an init that reads tensor values
            log.debug("%s: no estimate on the meta device (%s)", what, error)
            return
        check_budget(
            "model_params", sum(p.numel() for p in model.parameters()), f"{what}: parameters"
        )
        for module in model.modules():
            if next(module.children(), None) is None:  # leaves: each output counted once
                module.register_forward_hook(count)
        try:
            model.eval()(torch.zeros(1, spec.in_chans, side, side))
        except (RuntimeError, ValueError) as error:
            reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
            if "meta" in reason.lower():  # a forward that reads values: shapes not checked
                log.debug("%s: no dry forward on the meta device (%s)", what, reason)
                return
            raise UserError(
                f"{what} cannot take {side}x{side} images with {spec.in_chans} channel(s) "
                f"(resized to {spec.resize_to or side}): {reason}"
            ) from None
        except NotImplementedError as error:
            log.debug("%s: no dry forward on the meta device (%s)", what, error)
            return
    check_budget(
        "activation_bytes", 4 * activations, f"{what}: the activation size of one image", " bytes"
    )


def load_imagenet_classifier(input_size: int = 224, resize_to: int | None = 224) -> ImageClassifier:
    """tf_efficientnet_lite0 with the offline ImageNet weights *and* its 1000-class head, in eval.

    Feed [0, 1] RGB images (B, 3, input_size, input_size); they are resized to ``resize_to``
    inside the model. Logits index the standard ImageNet-1k class order.
    """
    spec = ModelSpec(
        OFFLINE_ARCH, 1000, input_size=input_size, resize_to=resize_to, pretrained="offline"
    )
    model = create_model(spec)
    state = offline_state_dict()
    model.head.fc.load_state_dict(
        {"weight": state["classifier.weight"], "bias": state["classifier.bias"]}
    )
    return model.eval()


@dataclass(frozen=True)
class ArchitectureInfo:
    """One row of ``robustlab models``."""

    name: str
    family: str
    offline_weights: bool  # usable pretrained without network
    input_size: int  # the side the weights / source study use
    mean: tuple[float, ...]
    std: tuple[float, ...]


def list_architectures() -> list[ArchitectureInfo]:
    """Built-ins, the offline-pretrained EfficientNet-Lite0, and the source studies' online
    backbones (see ``ANY_TIMM_NOTE``: any other timm name works too)."""
    import timm

    rows = [
        ArchitectureInfo(
            name,
            arch.family,
            False,
            arch.input_size,
            (arch.mean,) * arch.in_chans,
            (arch.std,) * arch.in_chans,
        )
        for name, arch in BUILTINS.items()
    ]
    families = {OFFLINE_ARCH: "EfficientNet-Lite", **ONLINE_ARCHS}
    for name, family in families.items():
        cfg = timm.get_pretrained_cfg(name)
        rows.append(
            ArchitectureInfo(
                name,
                f"{family} (timm)",
                name == OFFLINE_ARCH,
                int(cfg.input_size[-1]),
                tuple(cfg.mean),
                tuple(cfg.std),
            )
        )
    return rows
