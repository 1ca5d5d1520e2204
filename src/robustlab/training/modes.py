"""Train/eval mode policy shared by training and defences.

BatchNorm layers whose parameters are frozen keep their running statistics frozen too: a
``frozen`` backbone, the first n blocks of an AnB model and the untouched blocks of a partial
fine-tune all stay in eval mode while the rest of the model trains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


def set_train_mode(model: nn.Module) -> nn.Module:
    """Put ``model`` in train mode, except normalisation layers whose parameters are frozen."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily switch every submodule to eval mode, then restore each one's own mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def freeze(module: nn.Module, frozen: bool = True) -> None:
    """Set ``requires_grad`` on every parameter of ``module``."""
    for parameter in module.parameters():
        parameter.requires_grad_(not frozen)
