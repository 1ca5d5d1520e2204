"""From stored pixels to the package's tensors: float32 [0, 1], (N, C, H, W).

Conversion runs in chunks so peak memory stays near the size of the output tensor.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights (what PIL's convert('L') uses).
GREY_WEIGHTS = (0.299, 0.587, 0.114)
CHUNK = 1024


def rgb_to_grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) with ITU-R 601 weights."""
    weights = torch.tensor(GREY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True).clamp_(0.0, 1.0)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Square antialiased bilinear resize of (B, C, H, W) in [0, 1]."""
    if x.shape[-2:] == (size, size):
        return x
    out = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def to_tensor(
    images: np.ndarray,
    index: np.ndarray,
    *,
    channels: int | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """``images[index]`` (N, H, W, C uint8 or float32) as float32 (N, C', H', W') in [0, 1]."""
    n = len(index)
    _, height, width, native = images.shape
    out_c = channels or native
    out_h, out_w = (size, size) if size else (height, width)
    out = torch.empty((n, out_c, out_h, out_w), dtype=torch.float32)
    for start in range(0, n, CHUNK):
        chunk = np.ascontiguousarray(images[index[start : start + CHUNK]])
        # (B, H, W, C) -> (B, C, H, W), made contiguous while still small (uint8)
        x = torch.from_numpy(chunk).permute(0, 3, 1, 2).contiguous()
        target = out[start : start + len(chunk)]
        if out_c == native and not size:  # the common case: convert straight into the output
            target.copy_(x)
            if chunk.dtype == np.uint8:
                target.div_(255.0)
            continue
        target.copy_(convert_chunk(chunk, channels=channels, size=size))
    return out


def convert_chunk(
    chunk: np.ndarray, *, channels: int | None = None, size: int | None = None
) -> torch.Tensor:
    """(B, H, W, C) uint8 or float32 -> float32 (B, C', H', W') in [0, 1], a new tensor."""
    native = chunk.shape[-1]
    out_c = channels or native
    # (B, H, W, C) -> (B, C, H, W), made contiguous while still small (uint8): the resize
    # kernel then sees the same memory layout whichever path converts
    x = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2).contiguous()
    # uint8 -> float is a copy; float input is copied too, never handed out as a view
    x = x.float().div_(255.0) if chunk.dtype == np.uint8 else x.float().clone()
    if out_c == 1 and native == 3:
        x = rgb_to_grey(x)
    if size:
        x = resize(x, size)
    return x.expand(-1, out_c, -1, -1).contiguous() if x.shape[1] != out_c else x.contiguous()
