"""create_model: shapes, pixel-space gradients, normalisation, blocks, names and settings."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import UserError
from robustlab.models import (
    BUILTINS,
    ModelSpec,
    create_model,
    list_architectures,
    to_channels_last,
)

TIMM_ARCHS = ["tf_efficientnet_lite0", "mobilenetv2_100", "resnet18", "test_byobnet"]
ARCHS = [*BUILTINS, *TIMM_ARCHS]


@pytest.mark.parametrize("in_chans", [3, 1])
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_gradients_and_normalisation_buffers(arch: str, in_chans: int) -> None:
    model = create_model(ModelSpec(arch, num_classes=4, in_chans=in_chans, input_size=32)).eval()
    x = torch.rand(2, in_chans, 32, 32, requires_grad=True)

    logits = model(x)

    assert logits.shape == (2, 4)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    logits[:, 1].sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    buffers = dict(model.preprocess.named_buffers())
    assert buffers["mean"].shape == buffers["std"].shape == (1, in_chans, 1, 1)
    assert not list(model.preprocess.parameters())
    # mean/std live in the spec, so they are not saved with the weights
    assert not any(key.startswith("preprocess.") for key in model.state_dict())
    assert model.features(x).shape == (2, model.num_features)


def test_default_normalisation_follows_weights_and_studies() -> None:
    def stats(spec: ModelSpec) -> list[float]:
        pre = create_model(spec).preprocess
        return [*pre.mean.flatten().tolist(), *pre.std.flatten().tolist()]

    imagenet = timm.get_pretrained_cfg("mobilenetv2_100")
    assert stats(ModelSpec("mobilenetv2_100", 2)) == pytest.approx([*imagenet.mean, *imagenet.std])
    assert stats(ModelSpec("tf_efficientnet_lite0", 2)) == [0.5] * 6
    assert stats(ModelSpec("simple-cnn", 2, input_size=16)) == [0.0] * 3 + [1.0] * 3
    assert stats(ModelSpec("face-cnn", 2, in_chans=1, input_size=48)) == [0.5, 1.0]
    assert stats(ModelSpec("small-cnn", 2, in_chans=1, input_size=28)) == [0.5, 0.5]
    assert stats(ModelSpec("resnet18", 2, in_chans=1)) == pytest.approx(
        [sum(imagenet.mean) / 3, sum(imagenet.std) / 3]
    )
    custom = ModelSpec("resnet18", 2, mean=(0.1, 0.2, 0.3), std=(1, 2, 3))
    assert stats(custom) == pytest.approx([0.1, 0.2, 0.3, 1.0, 2.0, 3.0])


def test_preprocess_resizes_then_normalises() -> None:
    spec = ModelSpec("simple-cnn", 2, input_size=48, resize_to=24, mean=(0.1, 0.2, 0.3))
    model = create_model(spec)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 48, 48)

    shrunk = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(model.preprocess(x), shrunk - mean)
    assert model.preprocess(torch.rand(1, 3, 12, 12)).shape == (1, 3, 24, 24)
    unresized = create_model(ModelSpec("simple-cnn", 2, input_size=24, std=(2.0,) * 3))
    y = torch.rand(1, 3, 24, 24)
    torch.testing.assert_close(unresized.preprocess(y), y / 2.0)
    assert model(x).shape == (2, 2)
    with pytest.raises(UserError, match="expects images shaped"):
        model(torch.rand(2, 1, 48, 48))


@pytest.mark.parametrize(
    ("arch", "in_chans", "size", "resize_to", "features"),
    [
        ("simple-cnn", 3, 20, None, 8 * 20 * 20),
        ("simple-cnn", 3, 64, 24, 8 * 24 * 24),
        ("face-cnn", 1, 48, None, 12 * 6 * 6),
        ("small-cnn", 1, 28, None, 128),
        ("nsl-cnn", 1, 28, None, 64),
        ("nsl-cnn", 3, 32, None, 64),
    ],
)
def test_builtin_flatten_follows_input_size(
    arch: str, in_chans: int, size: int, resize_to: int | None, features: int
) -> None:
    model = create_model(
        ModelSpec(arch, 3, in_chans=in_chans, input_size=size, resize_to=resize_to)
    )
    assert model.num_features == features
    assert model(torch.rand(2, in_chans, size, size)).shape == (2, 3)
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    hidden_dense = arch in ("small-cnn", "nsl-cnn")
    assert len(model.blocks()) == len(convs) + hidden_dense


def test_builtin_too_small_input_is_a_user_error() -> None:
    with pytest.raises(UserError, match="face-cnn needs images of at least"):
        create_model(ModelSpec("face-cnn", 2, in_chans=1, input_size=4))


@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_partition_the_backbone_in_order(arch: str) -> None:
    model = create_model(ModelSpec(arch, 2, input_size=32))
    blocks = model.blocks()
    in_blocks = [id(p) for block in blocks for p in block.parameters()]
    assert len(in_blocks) == len(set(in_blocks))
    assert set(in_blocks) == {id(p) for p in model.backbone.parameters()}
    order = {id(p): i for i, p in enumerate(model.backbone.parameters())}
    firsts = [order[id(next(block.parameters()))] for block in blocks]
    assert firsts == sorted(firsts)


def test_efficientnet_blocks_are_stem_stages_head() -> None:
    backbone = create_model(ModelSpec("tf_efficientnet_lite0", 2)).backbone
    blocks = create_model(ModelSpec("tf_efficientnet_lite0", 2)).blocks()
    assert len(blocks) == len(backbone.blocks) + 2
    assert [type(m) for m in blocks[0]] == [type(backbone.conv_stem), type(backbone.bn1)]
    assert [type(m) for m in blocks[-1]] == [type(backbone.conv_head), type(backbone.bn2)]


def test_drop_rate_adds_dropout_before_the_head() -> None:
    model = create_model(ModelSpec("simple-cnn", 2, input_size=16, drop_rate=0.5))
    assert model.head.drop.p == 0.5
    x = torch.rand(4, 3, 16, 16)
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    ("arch", "close"), [("mobilenetv2-100", "mobilenetv2_100"), ("simple_cnn", "simple-cnn")]
)
def test_unknown_arch_suggests_a_close_name(arch: str, close: str) -> None:
    with pytest.raises(UserError, match=f"unknown architecture '{arch}' \\(did you mean '{close}'"):
        create_model(ModelSpec(arch, 2))


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"in_chans": 0}, "in_chans"),
        ({"input_size": 2.5}, "input_size"),
        ({"resize_to": 0}, "resize_to"),
        ({"mean": (0.5,)}, "mean"),
        ({"std": (1.0, 0.0, 1.0)}, "std"),
        ({"mean": (float("nan"),) * 3}, "mean"),
        ({"drop_rate": 1.0}, "drop_rate"),
        ({"arch": ""}, "arch"),
    ],
)
def test_bad_spec_names_the_field(settings: dict, field: str) -> None:
    with pytest.raises(UserError, match=field):
        ModelSpec(**{"arch": "simple-cnn", "num_classes": 2, **settings})


def test_spec_survives_json_and_rejects_unknown_fields() -> None:
    spec = ModelSpec("resnet18", 5, in_chans=1, mean=(0.4,), std=(0.2,), resize_to=64)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(UserError, match=r"unknown model spec field.*colour"):
        ModelSpec.from_dict({**spec.to_dict(), "colour": "red"})
    with pytest.raises(UserError, match=r"lacks field.*num_classes"):
        ModelSpec.from_dict({"arch": "resnet18"})


@pytest.mark.parametrize(
    ("arch", "pretrained", "message"),
    [
        ("resnet18", "imagnet", "did you mean 'imagenet'"),
        ("resnet18", "offline", "only for tf_efficientnet_lite0"),
        ("simple-cnn", "imagenet", "has no imagenet weights"),
        ("simple-cnn", "no/such/weights.pth", "neither 'imagenet', 'offline' nor an existing"),
    ],
)
def test_bad_pretrained_source_is_a_user_error(arch: str, pretrained: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        create_model(ModelSpec(arch, 2, pretrained=pretrained))


def test_channels_last_gives_the_same_logits() -> None:
    model = create_model(ModelSpec("tf_efficientnet_lite0", 3, input_size=32)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        fast = to_channels_last(model)
        conv = fast.backbone.conv_stem.weight
        assert conv.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4)


def test_list_architectures_rows() -> None:
    rows = {row.name: row for row in list_architectures()}
    assert set(BUILTINS) | {
        "tf_efficientnet_lite0",
        "mobilenetv2_100",
        "inception_v3",
        "vgg19",
    } <= set(rows)
    assert [name for name, row in rows.items() if row.offline_weights] == ["tf_efficientnet_lite0"]
    for row in rows.values():
        assert len(row.mean) == len(row.std) >= 1
        assert row.input_size > 0
    for name, arch in BUILTINS.items():  # each built-in works at its listed size and channels
        row = rows[name]
        spec = ModelSpec(name, 2, in_chans=arch.in_chans, input_size=row.input_size)
        x = torch.rand(1, arch.in_chans, row.input_size, row.input_size)
        assert create_model(spec)(x).shape == (1, 2)
