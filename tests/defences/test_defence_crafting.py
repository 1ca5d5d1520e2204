"""Defences craft with robustlab.attacks: adversarial training and evaluation share one engine."""

from __future__ import annotations

import pytest
import torch

from robustlab.attacks import get_attack
from robustlab.attacks.iterative import IterativeAttack
from robustlab.defences import FastFGSMConfig, PGDTrainingConfig, make_defence
from robustlab.errors import UserError


def test_pgd_training_and_pgd_evaluation_run_the_same_code_path(tiny_net, batch, monkeypatch):
    """Both go through IterativeAttack._run with the same settings and give the same examples."""
    x, y = batch
    model = tiny_net().eval()
    calls: list[tuple[str, int]] = []
    original = IterativeAttack._run

    def spy(self, *args, **kwargs):
        calls.append((self.name, self.steps))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(IterativeAttack, "_run", spy)
    config = PGDTrainingConfig(eps=0.1, steps=3)
    torch.manual_seed(5)
    crafted = make_defence(config).craft(model, x, y)
    trained_path = list(calls)
    calls.clear()
    evaluation = get_attack(
        "pgd", eps=0.1, steps=3, abs_stepsize=config.effective_step_size, seed=None
    )
    torch.manual_seed(5)
    evaluated = evaluation(model, x, y)
    assert trained_path == calls == [("pgd", 3)]
    assert torch.equal(crafted, evaluated)


def test_fast_fgsm_is_one_pgd_step_from_a_random_start(tiny_net, batch):
    x, y = batch
    model = tiny_net().eval()
    config = FastFGSMConfig(eps=0.1)
    torch.manual_seed(2)
    crafted = make_defence(config).craft(model, x, y)
    torch.manual_seed(2)
    expected = get_attack("pgd", eps=0.1, steps=1, abs_stepsize=0.125, seed=None)(model, x, y)
    assert torch.equal(crafted, expected)


@pytest.mark.parametrize("attack", ["apgd", "mifgsm", "fgsm", "ifgsm"])
def test_any_gradient_attack_of_the_registry_crafts_through_the_same_spec(attack, tiny_net, batch):
    x, y = batch
    model = tiny_net().eval()
    config = PGDTrainingConfig(eps=0.1, steps=2, attack=attack)
    assert config.crafting_attack().name == attack
    crafted = make_defence(config).craft(model, x, y)
    assert (crafted - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(crafted, x)
    loss = make_defence(config)(model.train(), x, y, epoch=1)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert config.to_dict()["attack"] == attack


def test_l2_training_uses_the_l2_form_and_unknown_attacks_are_refused():
    assert PGDTrainingConfig(eps=0.5, norm="l2", attack="apgd").crafting_attack().name == "apgd-l2"
    with pytest.raises(UserError, match=r"attack .*'square'"):
        PGDTrainingConfig(attack="square")
    with pytest.raises(UserError, match="no L2 form"):
        PGDTrainingConfig(eps=0.5, norm="l2", attack="mifgsm")


def test_crafting_equals_the_former_defence_engine_bit_for_bit(tiny_net, batch):
    """PGD-AT's examples are what defences/perturb.py crafted before (so weights are unchanged)."""
    import torch.nn.functional as F

    from robustlab.defences.perturb import perturb, random_in_ball

    x, y = batch
    model = tiny_net().eval()
    config = PGDTrainingConfig(eps=0.1, steps=3)
    torch.manual_seed(9)
    start = random_in_ball(x, config.eps, "linf")
    former = perturb(
        model,
        x,
        lambda logits: F.cross_entropy(logits, y, reduction="sum"),
        step_size=config.effective_step_size,
        steps=config.steps,
        norm="linf",
        radius=config.eps,
        start=start,
    )
    torch.manual_seed(9)
    assert torch.equal(make_defence(config).craft(model, x, y), former)
