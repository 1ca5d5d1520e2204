"""AttackSpec (an attack as data), the engine's 'kl' loss and Gaussian start, and FGM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from robustlab.attacks import AttackSpec, get_attack
from robustlab.attacks.spec import validated
from robustlab.errors import UserError


def test_text_settings_go_through_the_registry_converter():
    spec = AttackSpec(
        name="pgd", settings={"eps": "8/255", "steps": "7", "random_start": "no", "seed": "none"}
    )
    assert spec.settings == {"eps": 8 / 255, "steps": 7, "random_start": False, "seed": None}
    assert spec.build() == get_attack("pgd", eps=8 / 255, steps=7, random_start=False, seed=None)


def test_build_takes_an_eps_and_overrides_and_the_label_names_it():
    spec = AttackSpec(name="ifgsm", settings={"steps": 5, "loss": "mse"}, label="I-FGSM (mse)")
    assert spec.build(eps=0.03).eps == 0.03 and spec.build(steps=2).steps == 2
    assert spec.display == "I-FGSM (mse)" and AttackSpec(name="fgsm").display == "fgsm"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"name": "pgdd"}, "unknown attack 'pgdd' (did you mean 'pgd'?)"),
        ({"name": "pgd", "settings": {"stepz": 3}}, "did you mean 'steps'?"),
        ({"name": "pgd", "settings": {"steps": 0}}, "pgd.steps must be >= 1"),
        ({"name": "pgd", "settings": {"eps": "abc"}}, "pgd.eps must be a number"),
        ({"name": "pgd", "extra": 1}, "extra"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_problem(values, message):
    with pytest.raises(ValidationError):
        AttackSpec.model_validate(values)
    with pytest.raises(UserError) as error:
        validated(AttackSpec, values)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_spec_is_frozen():
    spec = AttackSpec(name="fgsm")
    with pytest.raises(ValidationError):
        spec.name = "pgd"  # type: ignore[misc]


def _kl_from_clean(model, x, x_adv):
    with torch.no_grad():
        clean = model(x).softmax(1)
        return F.kl_div(model(x_adv).log_softmax(1), clean, reduction="none").sum(1)


def test_kl_loss_moves_away_from_the_clean_prediction(model, batch):
    x, y = batch
    kl = get_attack("pgd", eps=0.05, steps=5, loss="kl", start_sigma=0.001)
    x_adv = kl(model, x, y)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-6
    jitter = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    assert _kl_from_clean(model, x, x_adv).mean() > 10 * _kl_from_clean(model, x, jitter).mean()
    with pytest.raises(UserError, match="'kl' is untargeted"):
        kl(model, x, y, target=(y + 1) % 4)


def test_gaussian_start_is_recorded_only_when_set():
    assert "start_sigma" not in get_attack("pgd").settings()
    assert get_attack("pgd", start_sigma=0.001).settings()["start_sigma"] == 0.001
    with pytest.raises(UserError, match=r"pgd\.start_sigma must be >= 0"):
        get_attack("pgd", start_sigma=-1.0)


def test_fgm_is_one_step_of_l2_length_eps_along_the_gradient(model, batch):
    x, y = batch
    fgm = get_attack("fgm", eps=0.5)
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y, reduction="sum"), x_in)
    expected = x + 0.5 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    direction = fgm.direction(model, x, y)
    torch.testing.assert_close(direction.flatten(1).norm(dim=1), torch.ones(len(x)))
    torch.testing.assert_close(x + 0.5 * direction, expected)
    x_adv = fgm(model, x, y)
    assert torch.equal(x_adv, (x + 0.5 * direction).clamp(0, 1))
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
