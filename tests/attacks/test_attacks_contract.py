"""The attack contract, checked for every registered attack on a tiny weightless CNN."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ALL,
    BOUNDED,
    EPS,
    NUM_CLASSES,
    RANDOM,
    CountingModel,
    DictOutput,
    TupleOutput,
    make_attack,
    make_model,
    target_for,
)
from torch import nn

from robustlab.attacks import SoftmaxOutputWarning, as_logits_model, flat_norm, get_attack
from robustlab.errors import UserError

TOL = 1e-5  # float32 rounding of x + delta


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ALL)
def test_output_keeps_shape_dtype_device_box_and_ball(name, dtype, model, batch):
    x, y = batch
    model, x = model.to(dtype), x.to(dtype)
    attack = make_attack(name)
    x_adv = attack(model, x, y, target_for(name, y))
    assert x_adv.shape == x.shape and x_adv.dtype == dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if attack.norm != "none":
        assert flat_norm(x_adv - x, attack.norm).max() <= attack.eps + TOL
    assert not torch.equal(x_adv, x), "the attack did not move any image"


@pytest.mark.parametrize("name", BOUNDED)
def test_eps_zero_returns_x(name, model, batch):
    x, y = batch
    assert torch.equal(make_attack(name, eps=0.0)(model, x, y), x)


@pytest.mark.parametrize("name", ALL)
def test_model_mode_parameters_and_grads_untouched(name, batch):
    x, y = batch
    model = make_model()
    frozen = model.features[0].bias
    frozen.requires_grad_(False)
    model.head.weight.grad = torch.randn_like(model.head.weight)  # pre-existing .grad
    before = {key: value.clone() for key, value in model.state_dict().items()}
    grad_before = model.head.weight.grad.clone()
    make_attack(name)(model, x, y, target_for(name, y))
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert torch.equal(model.head.weight.grad, grad_before)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.weight")
    assert [p.requires_grad for p in model.parameters()].count(False) == 1
    assert not frozen.requires_grad
    assert not any(module.training for module in model.modules())


@pytest.mark.parametrize("name", ALL)
def test_train_mode_is_refused_unless_told(name, batch):
    x, y = batch
    model = make_model().train()
    with pytest.raises(UserError, match="train mode"):
        make_attack(name)(model, x, y, target_for(name, y))
    assert all(module.training for module in model.modules())
    # 'eval' attacks in eval mode (BatchNorm statistics untouched) and restores train mode
    stats = model.features[1].running_mean.clone()
    x_eval = make_attack(name, train_mode="eval")(model, x, y, target_for(name, y))
    assert all(module.training for module in model.modules())
    assert torch.equal(model.features[1].running_mean, stats)
    assert torch.equal(x_eval, make_attack(name)(model.eval(), x, y, target_for(name, y)))


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_output(name, model, batch):
    x, y = batch
    target = target_for(name, y)
    first = make_attack(name, seed=3)(model, x, y, target)
    rng = torch.get_rng_state()
    second = make_attack(name, seed=3)(model, x, y, target)
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG was consumed"
    if name in RANDOM:
        assert not torch.equal(first, make_attack(name, seed=4)(model, x, y, target))


@pytest.mark.parametrize("name", ALL)
def test_batched_not_per_image(name, model, batch):
    """The number of model calls does not grow with the batch size."""
    x, y = batch
    counts = []
    settings = {"abort_early": False} if name == "cw-l2" else {}  # abort depends on the data
    for size in (3, 12):
        counting = CountingModel(model).eval()
        make_attack(name, **settings)(counting, x[:size], y[:size], target_for(name, y[:size]))
        counts.append(len(counting.calls))
        # noise never runs the model on the batch: one image only checks the labels
        expected = 1 if name.endswith("-noise") else size
        assert max(n for n, _ in counting.calls) == expected
    assert counts[0] == counts[1]


@pytest.mark.parametrize("wrapper", [TupleOutput, DictOutput])
@pytest.mark.parametrize("name", ["fgsm", "pgd", "cw-l2", "filter"])
def test_tuple_and_dict_outputs_go_through_the_adapter(name, wrapper, model, batch):
    x, y = batch
    wrapped = wrapper(model).eval()
    expected = make_attack(name)(model, x, y, target_for(name, y))
    assert torch.equal(make_attack(name)(wrapped, x, y, target_for(name, y)), expected)
    adapted = as_logits_model(wrapped)
    assert not adapted.training
    assert torch.equal(adapted(x), model(x))


def test_adapter_names_a_missing_key(model, batch):
    x, y = batch

    class NoLogits(nn.Module):
        def forward(self, x):
            return {"a": x.flatten(1), "b": x.flatten(1)}

    with pytest.raises(UserError, match="'logits'"):
        make_attack("fgsm")(NoLogits().eval(), x, y)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "sign-noise"])
def test_softmax_outputs_warn(name, model, batch):
    x, y = batch
    probabilities = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    with pytest.warns(SoftmaxOutputWarning, match="sum to 1"):
        make_attack(name)(probabilities, x, y)


@pytest.mark.parametrize("name", ALL)
def test_invalid_eps_names_the_field(name):
    attack = get_attack(name)
    if attack.norm == "none":
        with pytest.raises(UserError, match="no epsilon"):
            attack.with_eps(0.1)
        return
    bad = [-0.1, float("nan")] + ([1.5] if attack.norm == "linf" else [])
    for eps in bad:
        with pytest.raises(UserError, match=rf"{name}\.eps"):
            get_attack(name, eps=eps)
        with pytest.raises(UserError, match=rf"{name}\.eps"):
            attack.with_eps(eps)


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("pgd", "steps", 0),
        ("pgd", "steps", 2.5),
        ("pgd", "restarts", 0),
        ("pgd", "rel_stepsize", -1.0),
        ("pgd", "random_start", "yes"),
        ("pgd", "loss", "hinge"),
        ("ifgsm", "steps", 0),
        ("mifgsm", "decay", -1.0),
        ("pgd-l2", "steps", 0),
        ("cw-l2", "binary_search_steps", 0),
        ("cw-l2", "kappa", -1.0),
        ("filter", "iterations", 0),
        ("filter", "penalty", "l1"),
        ("minimal", "base", "cw-l2"),
        ("gaussian-noise", "sigma", -0.1),
        ("fgsm", "train_mode", "maybe"),
        ("fgsm", "seed", 1.5),
    ],
)
def test_invalid_settings_name_the_field(name, field, value):
    with pytest.raises(UserError, match=rf"{name}\.{field}"):
        get_attack(name, **{field: value})


@pytest.mark.parametrize("name", ALL)
def test_bad_inputs_are_clear_errors(name, model, batch):
    x, y = batch
    attack = make_attack(name)
    target = target_for(name, y)
    cases = [
        (x * 2, y, target, r"\[0, 1\]"),
        (x - 0.5, y, target, r"\[0, 1\]"),
        (torch.full_like(x, float("nan")), y, target, r"\[0, 1\]"),
        (x[0], y, target, "shape"),
        ((x * 255).to(torch.uint8), y, target, "float"),
        (x, y[:-1], target, "y must have shape"),
        (x, y.float(), target, "integer"),
        (x, y, torch.full_like(y, NUM_CLASSES), "out of range"),
        (x, y, -1, "target"),
        (x, torch.full_like(y, NUM_CLASSES + 3), target, "out of range"),
    ]
    for bad_x, bad_y, bad_target, message in cases:
        with pytest.raises(UserError, match=message):
            attack(model, bad_x, bad_y, bad_target)


def test_filter_needs_a_target(model, batch):
    x, y = batch
    with pytest.raises(UserError, match="needs a target"):
        make_attack("filter")(model, x, y)


def test_non_module_callables_and_empty_batches(model, batch):
    x, y = batch
    attack = make_attack("pgd")
    assert torch.equal(attack(lambda t: model(t), x, y), attack(model, x, y))
    assert attack(model, x[:0], y[:0]).shape == (0, 3, 16, 16)


def test_targeted_attacks_aim_at_the_target(model, batch):
    x, y = batch
    target = (y + 1) % NUM_CLASSES
    for name in ["fgsm", "pgd", "mifgsm", "cw-l2", "filter"]:
        norm = make_attack(name).norm
        settings = {"eps": EPS[norm] * 4} if norm in EPS else {"iterations": 100}
        attack = make_attack(name, **settings)
        with torch.no_grad():
            hit = (model(attack(model, x, y, target)).argmax(1) == target).float().mean()
        assert hit > 0.5, name
