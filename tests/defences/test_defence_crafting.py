"""Defences craft with robustlab.attacks: adversarial training and evaluation share one engine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustlab.attacks import AttackSpec, get_attack
from robustlab.attacks.iterative import IterativeAttack
from robustlab.defences import (
    DefenceSpec,
    FastFGSMConfig,
    NSLConfig,
    PGDTrainingConfig,
    TRADESConfig,
    defence_from_dict,
    make_defence,
)
from robustlab.errors import UserError


def _spy_runs(monkeypatch) -> list[tuple[str, int, str]]:
    """Record every run of the iterative engine's loop: (attack, steps, loss)."""
    calls: list[tuple[str, int, str]] = []
    original = IterativeAttack._run

    def spy(self, *args, **kwargs):
        calls.append((self.name, self.steps, self.loss))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(IterativeAttack, "_run", spy)
    return calls


def test_pgd_training_and_pgd_evaluation_run_the_same_code_path(tiny_net, batch, monkeypatch):
    """Both go through IterativeAttack._run with equal attacks and give the same examples."""
    x, y = batch
    model = tiny_net().eval()
    calls = _spy_runs(monkeypatch)
    objective = make_defence(PGDTrainingConfig(eps=0.1, steps=3))
    evaluation = AttackSpec(name="pgd", settings={"steps": 3, "seed": None}).build(
        eps=0.1, abs_stepsize=objective.config.resolved().step_size
    )
    assert objective.attack == evaluation  # the very same attack object, by value
    torch.manual_seed(5)
    crafted = objective.craft(model, x, y)
    trained_path = list(calls)
    calls.clear()
    torch.manual_seed(5)
    evaluated = evaluation(model, x, y)
    assert trained_path == calls == [("pgd", 3, "ce")]
    assert torch.equal(crafted, evaluated)


def test_trades_crafts_with_pgd_on_the_kl_loss(tiny_net, batch, monkeypatch):
    x, y = batch
    model = tiny_net().eval()
    calls = _spy_runs(monkeypatch)
    objective = make_defence(TRADESConfig(eps=0.1, steps=3))
    torch.manual_seed(3)
    crafted = objective.craft(model, x, y)
    assert calls == [("pgd", 3, "kl")]
    attack = get_attack(
        "pgd", eps=0.1, steps=3, abs_stepsize=2.5 * 0.1 / 3, loss="kl", start_sigma=0.001, seed=None
    )
    torch.manual_seed(3)
    assert torch.equal(crafted, attack(model, x, y))


def _former_trades(model, x, eps, steps, step_size):
    """The former defence engine's TRADES (defences/perturb.py before it was deleted)."""
    with torch.no_grad():
        clean = F.softmax(model(x), dim=1)
    x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), clean, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        delta = (x_adv.detach() - x + step_size * grad.sign()).clamp(-eps, eps)
        x_adv = (x + delta).clamp(0, 1)
    return x_adv.detach()


def test_trades_examples_match_the_former_engine(tiny_net, batch):
    """Same start, gradient and steps; only the projection's rounding may differ (1 ulp)."""
    x, y = batch
    model = tiny_net().eval()
    torch.manual_seed(4)
    crafted = make_defence(TRADESConfig(eps=0.1, steps=4)).craft(model, x, y)
    torch.manual_seed(4)
    former = _former_trades(model, x, 0.1, 4, 2.5 * 0.1 / 4)
    torch.testing.assert_close(crafted, former, rtol=0, atol=1e-6)


def _former_nsl_l2(model, x, y, step):
    """The former NSL neighbour: one step along the batch-mean CE gradient, L2-normalised."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    squared = grad.flatten(1).square().sum(1).clamp_min(1e-12)
    direction = grad * squared.rsqrt().view(-1, 1, 1, 1)
    return (x + step * direction).detach()


def test_nsl_step_is_fgm_and_bit_identical_to_the_former_engine(tiny_net, batch, monkeypatch):
    """With a power-of-two batch the mean and the summed loss give the same normalised step."""
    x, y = batch
    model = tiny_net().eval()
    objective = make_defence(NSLConfig(adv_step_size=0.05))
    assert objective.attack == get_attack("fgm", eps=0.05, seed=None)
    direction = objective.attack.direction(model, x, y)
    crafted = objective.craft(model, x, y)
    assert torch.equal(crafted, x + 0.05 * direction)
    assert torch.equal(crafted, _former_nsl_l2(model, x, y, 0.05))
    odd = slice(0, 11)  # another batch size: the same up to rounding
    torch.testing.assert_close(
        objective.craft(model, x[odd], y[odd]), _former_nsl_l2(model, x[odd], y[odd], 0.05)
    )


def test_nsl_linf_and_several_steps_use_fgsm_and_pgd():
    assert make_defence(NSLConfig(adv_grad_norm="infinity")).attack.name == "fgsm"
    several = make_defence(NSLConfig(adv_step_size=0.01, pgd_iterations=3, pgd_epsilon=0.02))
    assert several.attack == get_attack(
        "pgd-l2", eps=0.02, steps=3, abs_stepsize=0.01, random_start=False, seed=None
    )


def test_fast_fgsm_is_one_pgd_step_from_a_random_start(tiny_net, batch):
    x, y = batch
    model = tiny_net().eval()
    torch.manual_seed(2)
    crafted = make_defence(FastFGSMConfig(eps=0.1)).craft(model, x, y)
    torch.manual_seed(2)
    expected = get_attack("pgd", eps=0.1, steps=1, abs_stepsize=0.125, seed=None)(model, x, y)
    assert torch.equal(crafted, expected)


@pytest.mark.parametrize("attack", ["apgd", "mifgsm", "fgsm", "ifgsm", "apgd-t"])
def test_any_gradient_attack_of_the_registry_crafts_through_the_same_spec(attack, tiny_net, batch):
    x, y = batch
    model = tiny_net().eval()
    spec = DefenceSpec(name="pgd", settings={"eps": "0.1", "steps": 2, "attack": attack})
    assert spec.attack is not None and spec.attack.name == attack
    objective, settings = spec.build()
    assert objective.attack == spec.attack.build()
    crafted = objective.craft(model, x, y)
    assert (crafted - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(crafted, x)
    loss = objective(model.train(), x, y, epoch=1)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert settings["attack"] == attack


@pytest.mark.parametrize("attack", ["square", "fab", "cw-l2", "minimal", "autoattack", "filter"])
def test_non_gradient_and_minimum_norm_attacks_are_refused_in_one_line(attack):
    with pytest.raises(UserError) as error:
        defence_from_dict({"name": "pgd", "attack": attack})
    text = str(error.value)
    assert f"attack '{attack}' cannot craft" in text and "\n" not in text


def test_l2_training_uses_the_l2_form():
    assert PGDTrainingConfig(eps=0.5, norm="l2", attack="apgd").crafting_spec().name == "apgd-l2"
    assert PGDTrainingConfig(eps=0.5, norm="l2", attack="fgsm").crafting_spec().name == "fgm"
    with pytest.raises(UserError, match="no l2 form"):
        PGDTrainingConfig(eps=0.5, norm="l2", attack="mifgsm")


def test_a_given_crafting_attack_must_follow_from_the_settings():
    spec = DefenceSpec(name="pgd", settings={"eps": 0.1, "steps": 5})
    assert DefenceSpec.model_validate(spec.model_dump()) == spec  # the dump omits the attack
    assert DefenceSpec(name="pgd", settings=spec.settings, attack=spec.attack) == spec
    with pytest.raises(ValueError, match="follows from the settings"):
        DefenceSpec(name="pgd", settings={"eps": 0.1}, attack={"name": "fgsm"})
