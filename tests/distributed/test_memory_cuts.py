"""Issue 13's memory cuts move no number: the sweep's norms and the streamed loader's batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.attacks.base import flat_norm
from robustlab.attacks.sweep import _delta_norms
from robustlab.data.stream import ENV_WORKERS, StreamedImages, batches, open_npy_rows


@pytest.mark.parametrize("size", [None, 1, 3, 64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_delta_norms_equal_the_whole_chunk_norms(size: int | None, channels_last: bool) -> None:
    generator = torch.Generator().manual_seed(size or 0)
    x = torch.rand((20, 3, 9, 9), generator=generator)
    idx = torch.randperm(20, generator=generator)[:13]
    new_adv = (x[idx] + 0.05 * torch.randn((13, 3, 9, 9), generator=generator)).clamp(0, 1)
    if channels_last:
        new_adv = new_adv.contiguous(memory_format=torch.channels_last)
    delta = new_adv - x[idx]
    linf, l2 = _delta_norms(new_adv, x, idx, size)
    assert torch.equal(linf, flat_norm(delta, "linf"))
    assert torch.equal(l2, flat_norm(delta, "l2"))
    assert torch.equal(new_adv, (x[idx] + delta))  # the adversarials themselves untouched


def test_flat_norm_overwrite_gives_the_same_norm() -> None:
    delta = torch.randn((4, 2, 5, 5), generator=torch.Generator().manual_seed(1))
    expected = flat_norm(delta, "linf")
    assert torch.equal(flat_norm(delta.clone(), "linf", overwrite=True), expected)
    assert torch.equal(flat_norm(torch.zeros((3, 0)), "linf", overwrite=True), torch.zeros(3))


@pytest.mark.parametrize("in_memory_rows", [False, True])
def test_streamed_batches_with_workers_equal_in_memory_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory_rows: bool
) -> None:
    """Workers forked after the free heap is released (file rows) or none (rows in memory)."""
    monkeypatch.setenv(ENV_WORKERS, "2")
    rows = np.random.default_rng(0).integers(0, 256, (11, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", rows)
    source = rows if in_memory_rows else open_npy_rows(tmp_path / "images.npy")
    index = np.arange(2, 11)
    images = StreamedImages(source, index, channels=None, size=None)
    expected = torch.from_numpy(rows[index]).permute(0, 3, 1, 2).float().div(255.0)
    order = [np.array([4, 0, 7]), np.array([1]), np.array([8, 2, 3, 5, 6])]
    got = list(batches(images, order))
    assert len(got) == len(order)
    for batch, part in zip(got, order, strict=True):
        assert torch.equal(batch, expected[part])
