"""Devices: ``--device auto`` (CUDA when there is one, else CPU), and host-to-device copies that
overlap with compute on a GPU (pinned host memory + ``non_blocking``)."""

from __future__ import annotations

import os
from typing import TypeVar

import torch

from robustlab.errors import UserError

T = TypeVar("T")


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' -> this process's GPU (LOCAL_RANK under torchrun) or the CPU; others checked."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"--device {name}: {str(error).splitlines()[0]}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def pin_for(tensor: T, device: str | torch.device | None) -> T:
    """``tensor`` in page-locked memory when it will be copied to a GPU in slices (a slice of a
    pinned tensor is pinned, so each batch copy can run asynchronously); else unchanged.

    A data set streamed from disk (not a tensor) is left as it is: pinning would read all of it
    into memory, and its batches are fresh tensors anyway.
    """
    if not isinstance(tensor, torch.Tensor):
        return tensor
    if device is None or torch.device(device).type != "cuda" or tensor.device.type != "cpu":
        return tensor
    return tensor if tensor.is_pinned() else tensor.pin_memory()


def to_device(tensor: torch.Tensor, device: str | torch.device | None) -> torch.Tensor:
    """``tensor.to(device)``, asynchronous from pinned memory to a GPU."""
    if device is None:
        return tensor
    device = torch.device(device)
    return tensor.to(device, non_blocking=device.type == "cuda" and tensor.is_pinned())
