"""Classifiers: ``create_model(ModelSpec) -> ImageClassifier``, checkpoints, block transfer.

Every model takes float32 images in [0, 1], shape (B, C, H, W), and returns logits (B, K); its
first module resizes and normalises, so attacks work in pixel space.
"""

from robustlab.models.checkpoint import load_checkpoint, read_run_config, save_checkpoint
from robustlab.models.classifier import (
    ClassifierHead,
    ImageClassifier,
    ModelSpec,
    Preprocess,
    backbone_blocks,
    to_channels_last,
)
from robustlab.models.factory import (
    ANY_TIMM_NOTE,
    ArchitectureInfo,
    create_model,
    list_architectures,
    load_imagenet_classifier,
)
from robustlab.models.pretrained import load_foreign_weights, offline_state_dict
from robustlab.models.small_cnns import BUILTINS
from robustlab.models.transfer import freeze_blocks, transfer_blocks

__all__ = [
    "ANY_TIMM_NOTE",
    "BUILTINS",
    "ArchitectureInfo",
    "ClassifierHead",
    "ImageClassifier",
    "ModelSpec",
    "Preprocess",
    "backbone_blocks",
    "create_model",
    "freeze_blocks",
    "list_architectures",
    "load_checkpoint",
    "load_foreign_weights",
    "load_imagenet_classifier",
    "offline_state_dict",
    "read_run_config",
    "save_checkpoint",
    "to_channels_last",
    "transfer_blocks",
]
