"""Defence objectives: reduction to the plain loss, warm-up, BN policy, no gradient leaks."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.defences import (
    FastFGSMConfig,
    NSLConfig,
    PGDTrainingConfig,
    TRADESConfig,
    make_defence,
)
from robustlab.training.modes import set_train_mode

ATTACKING = {
    "pgd": PGDTrainingConfig(eps=0.1, steps=3),
    "fast-fgsm": FastFGSMConfig(eps=0.1),
    "trades": TRADESConfig(eps=0.1, steps=3, beta=6.0),
    "nsl": NSLConfig(multiplier=0.5, adv_step_size=0.1, adv_grad_norm="linf"),
}
# The adversarial term switched off: by zero radius or zero weight.
PLAIN = {
    "pgd eps=0": PGDTrainingConfig(eps=0.0, steps=3),
    "fast-fgsm eps=0": FastFGSMConfig(eps=0.0),
    "trades eps=0": TRADESConfig(eps=0.0, steps=3),
    "trades beta=0": TRADESConfig(eps=0.1, steps=3, beta=0.0),
    "nsl multiplier=0": NSLConfig(multiplier=0.0, adv_step_size=0.1),
}
# Train-mode forward passes of the update step, i.e. BatchNorm statistics updates per batch.
TRAIN_FORWARDS = {"pgd": 1, "fast-fgsm": 1, "trades": 2, "nsl": 2}


def _plain_loss(model, x, y):
    return F.cross_entropy(model(x), y)


def _batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("config", PLAIN.values(), ids=PLAIN.keys())
def test_loss_reduces_to_plain_loss_without_adversarial_term(config, tiny_net, batch):
    x, y = batch
    model = set_train_mode(tiny_net())
    loss = make_defence(config)(model, x, y, epoch=1)
    torch.testing.assert_close(loss, _plain_loss(model, x, y))


def test_nsl_with_zero_step_is_labeled_loss_times_one_plus_multiplier(tiny_net, batch):
    x, y = batch
    model = set_train_mode(tiny_net())
    loss = make_defence(NSLConfig(multiplier=0.3, adv_step_size=0.0))(model, x, y, epoch=1)
    torch.testing.assert_close(loss, 1.3 * _plain_loss(model, x, y))


@pytest.mark.parametrize("name", ATTACKING)
def test_adversarial_loss_exceeds_plain_loss(name, tiny_net, batch):
    x, y = batch
    model = set_train_mode(tiny_net())
    loss = make_defence(ATTACKING[name])(model, x, y, epoch=1)
    assert loss > _plain_loss(model, x, y)


@pytest.mark.parametrize("name", ATTACKING)
def test_warmup_delays_the_adversarial_term(name, tiny_net, batch):
    x, y = batch
    model = set_train_mode(tiny_net())
    config = dataclasses.replace(ATTACKING[name], warmup_epochs=2)
    objective = make_defence(config)
    plain = _plain_loss(model, x, y)
    for epoch in (1, 2):
        torch.testing.assert_close(objective(model, x, y, epoch), plain)
    assert not torch.allclose(objective(model, x, y, 3), plain)


@pytest.mark.parametrize("name", ATTACKING)
def test_crafting_uses_eval_mode_and_leaves_model_untouched(name, tiny_net, batch):
    x, y = batch
    model = set_train_mode(tiny_net())
    model.backbone[1].eval()  # a frozen-style BN kept in eval must stay so
    state = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    seen_modes = []
    hooks = [
        bn.register_forward_hook(lambda m, i, o: seen_modes.append(m.training))
        for bn in _batchnorms(model)
    ]
    x_adv = make_defence(ATTACKING[name]).craft(model, x, y)
    for hook in hooks:
        hook.remove()
    assert seen_modes and not any(seen_modes)  # every crafting forward ran in eval mode
    assert [m.training for m in model.modules()] == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # running stats untouched
    assert all(p.grad is None for p in model.parameters())
    assert not x_adv.requires_grad and x_adv.shape == x.shape


@pytest.mark.parametrize("name", ATTACKING)
def test_bn_statistics_move_only_in_the_update_forwards(name, tiny_net, batch):
    x, y = batch
    model = set_train_mode(tiny_net())
    make_defence(ATTACKING[name])(model, x, y, epoch=1)
    for bn in _batchnorms(model):
        assert int(bn.num_batches_tracked) == TRAIN_FORWARDS[name]


def _manual_loss(name, config, model, x, x_adv, y):
    """Each defence's final loss written out by hand from the crafted inputs."""
    if name in ("pgd", "fast-fgsm"):
        return F.cross_entropy(model(x_adv), y)
    if name == "trades":
        logits = model(x)
        log_adv, clean = F.log_softmax(model(x_adv), 1), F.softmax(logits, 1)
        kl = (clean * (clean.log() - log_adv)).sum() / len(y)
        return F.cross_entropy(logits, y) + config.beta * kl
    return F.cross_entropy(model(x), y) + config.multiplier * F.cross_entropy(model(x_adv), y)


@pytest.mark.parametrize("name", ATTACKING)
def test_parameter_gradient_is_that_of_the_final_loss_alone(name, tiny_net, batch):
    x, y = batch
    config = ATTACKING[name]
    model = set_train_mode(tiny_net())
    reference = copy.deepcopy(model)

    torch.manual_seed(5)
    loss = make_defence(config)(model, x, y, epoch=1)
    assert all(p.grad is None for p in model.parameters())  # crafting wrote no .grad
    loss.backward()

    torch.manual_seed(5)  # same random start
    x_adv = make_defence(config).craft(reference, x, y)
    manual = _manual_loss(name, config, reference, x, x_adv, y)
    expected = torch.autograd.grad(manual, list(reference.parameters()))
    torch.testing.assert_close(loss, manual)
    for param, grad in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, grad)


@pytest.mark.parametrize(
    "config",
    [
        PGDTrainingConfig(eps=0.05, steps=4, norm="linf"),
        PGDTrainingConfig(eps=0.5, steps=4, norm="l2"),
        FastFGSMConfig(eps=0.05),
        TRADESConfig(eps=0.05, steps=4, norm="linf"),
        TRADESConfig(eps=0.5, steps=4, norm="l2"),
    ],
    ids=["pgd-linf", "pgd-l2", "fast", "trades-linf", "trades-l2"],
)
def test_crafted_inputs_stay_in_the_ball_and_the_pixel_box(config, tiny_net, batch):
    x, y = batch
    x_adv = make_defence(config).craft(set_train_mode(tiny_net()), x, y)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if getattr(config, "norm", "linf") == "linf" else delta.norm(dim=1)
    assert (size <= config.eps + 1e-6).all()
    assert size.max() > 0.5 * config.eps  # it did move
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_training_examples_raise_the_loss_more_than_noise(tiny_net, batch):
    x, y = batch
    model = tiny_net().eval()
    x_adv = make_defence(PGDTrainingConfig(eps=0.1, steps=5)).craft(model, x, y)
    noise = (x + 0.1 * torch.randn_like(x).sign()).clamp(0, 1)
    assert _plain_loss(model, x_adv, y) > _plain_loss(model, noise, y) > 0


def test_objective_runs_on_channels_last_inputs(tiny_net, batch):
    x, y = batch
    model = set_train_mode(tiny_net()).to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    loss = make_defence(PGDTrainingConfig(eps=0.1, steps=2))(model, x, y, epoch=1)
    assert torch.isfinite(loss)
