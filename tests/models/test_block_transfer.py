"""Block transfer (AnB / AnB+): copied blocks, fresh rest, frozen flags and BatchNorm mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlab.errors import UserError
from robustlab.models import (
    ImageClassifier,
    ModelSpec,
    create_model,
    freeze_blocks,
    transfer_blocks,
)

SPECS = {
    "mobilenetv2_100": ModelSpec("mobilenetv2_100", 3, input_size=32),
    "simple-cnn": ModelSpec("simple-cnn", 3, input_size=16),
}


def _base_a(spec: ModelSpec) -> ImageClassifier:
    """A source model whose BatchNorm statistics differ from a fresh model's."""
    torch.manual_seed(1)
    model = create_model(spec).train()
    with torch.no_grad():
        model(torch.rand(4, spec.in_chans, spec.input_size, spec.input_size))
    return model.eval()


def _equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("freeze", [True, False])
@pytest.mark.parametrize("arch", list(SPECS))
def test_first_n_blocks_are_copied_and_the_rest_stay_fresh(arch: str, freeze: bool) -> None:
    spec = SPECS[arch]
    source = _base_a(spec)
    torch.manual_seed(2)
    target = create_model(spec)
    fresh_head = target.head.fc.weight.detach().clone()
    n = 2

    assert transfer_blocks(source, target, n, freeze=freeze) is target

    src, dst = source.blocks(), target.blocks()
    for i in range(n):
        assert _equal(src[i], dst[i]), f"block {i} not copied"
    assert not _equal(src[n], dst[n])
    assert torch.equal(target.head.fc.weight, fresh_head)
    for i, block in enumerate(dst):
        flags = {p.requires_grad for p in block.parameters()}
        assert flags == {not (freeze and i < n)}, f"block {i}"
    assert all(p.requires_grad for p in target.head.parameters())
    assert target.frozen_blocks == (n if freeze else 0)


def test_copied_batchnorm_statistics_include_the_running_buffers() -> None:
    spec = SPECS["mobilenetv2_100"]
    source = _base_a(spec)
    target = transfer_blocks(source, create_model(spec), 1, freeze=True)
    (src_bn,), (dst_bn,) = _batchnorms(source.blocks()[0]), _batchnorms(target.blocks()[0])
    assert not torch.equal(src_bn.running_mean, torch.zeros_like(src_bn.running_mean))
    assert torch.equal(dst_bn.running_mean, src_bn.running_mean)
    assert torch.equal(dst_bn.running_var, src_bn.running_var)


def test_frozen_batchnorm_stays_in_eval_while_training() -> None:
    spec = SPECS["mobilenetv2_100"]
    target = transfer_blocks(_base_a(spec), create_model(spec), 3, freeze=True)
    blocks = target.blocks()
    frozen_stats = [bn.running_mean.clone() for b in blocks[:3] for bn in _batchnorms(b)]
    trained_stats = [bn.running_mean.clone() for bn in _batchnorms(blocks[3])]

    target.train()
    assert all(not bn.training for b in blocks[:3] for bn in _batchnorms(b))
    assert all(bn.training for b in blocks[3:] for bn in _batchnorms(b))
    with torch.no_grad():
        target(torch.rand(4, 3, 32, 32))

    after = [bn.running_mean for b in blocks[:3] for bn in _batchnorms(b)]
    assert all(torch.equal(a, b) for a, b in zip(frozen_stats, after, strict=True))
    assert not torch.equal(trained_stats[0], _batchnorms(blocks[3])[0].running_mean)
    target.eval()
    assert not any(m.training for m in target.modules())


def test_all_blocks_or_none() -> None:
    spec = SPECS["simple-cnn"]
    source = _base_a(spec)
    everything = transfer_blocks(source, create_model(spec), len(source.blocks()), freeze=True)
    assert _equal(everything.backbone, source.backbone)
    assert not any(p.requires_grad for p in everything.backbone.parameters())
    torch.manual_seed(5)
    nothing = transfer_blocks(source, create_model(spec), 0, freeze=True)
    assert not _equal(nothing.blocks()[0], source.blocks()[0])
    assert all(p.requires_grad for p in nothing.parameters())


def test_freeze_blocks_zero_unfreezes_everything() -> None:
    model = freeze_blocks(create_model(SPECS["simple-cnn"]), 3)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    freeze_blocks(model, 0)
    assert all(p.requires_grad for p in model.parameters())
    assert model.frozen_modules() == []


@pytest.mark.parametrize("n", [-1, 4, 1.5, True])
def test_block_count_out_of_range_is_a_user_error(n: object) -> None:
    spec = SPECS["simple-cnn"]  # 3 blocks
    with pytest.raises(UserError, match=r"number of blocks must be a whole number in \[0, 3\]"):
        transfer_blocks(create_model(spec), create_model(spec), n, freeze=True)  # type: ignore[arg-type]


def test_different_architectures_are_refused() -> None:
    with pytest.raises(UserError, match="same architecture"):
        transfer_blocks(
            create_model(SPECS["simple-cnn"]),
            create_model(SPECS["mobilenetv2_100"]),
            1,
            freeze=True,
        )
    small28 = create_model(ModelSpec("small-cnn", 2, in_chans=1, input_size=28))
    small40 = create_model(ModelSpec("small-cnn", 2, in_chans=1, input_size=40))
    with pytest.raises(UserError, match="block 2 differs"):
        transfer_blocks(small28, small40, 3, freeze=False)
