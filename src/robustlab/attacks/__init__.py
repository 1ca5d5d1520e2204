"""Adversarial attacks on image classifiers, in [0, 1] pixel space.

One contract (see ``robustlab.attacks.base``): an attack holds validated settings and is
called as ``attack(model, x, y, target=None) -> x_adv``. Build attacks by name with
``get_attack``; run a whole accuracy-vs-epsilon curve with ``sweep``::

    attack = get_attack("pgd", eps=8 / 255, steps=10)
    x_adv = attack(model, x, y)                      # (B, C, H, W) in [0, 1]
    curve = sweep(attack, model, x, y, [0.01, 0.02, 0.03], keep_adversarials=False)
    curve.accuracy()                                 # robust accuracy per epsilon
"""

from robustlab.attacks.apgd import APGD, APGDL2
from robustlab.attacks.apgd_targeted import APGDTargeted, APGDTargetedL2
from robustlab.attacks.autoattack import AutoAttack
from robustlab.attacks.base import (
    Attack,
    Batch,
    DirectionAttack,
    LogitsModel,
    MinimumNormAttack,
    SoftmaxOutputWarning,
    as_logits_model,
    attack_mode,
    flat_norm,
    label_loss,
    logits_from_output,
)
from robustlab.attacks.bpda import BPDA
from robustlab.attacks.cw import CarliniWagnerL2
from robustlab.attacks.epsilon import parse_eps, parse_eps_list
from robustlab.attacks.fab import FAB
from robustlab.attacks.fgsm import FGM, FGSM
from robustlab.attacks.filter import FilterAttack, FilterResult
from robustlab.attacks.iterative import IFGSM, MIFGSM, PGD, PGDL2
from robustlab.attacks.minimal import MinimalEps
from robustlab.attacks.noise import GaussianNoise, SignNoise
from robustlab.attacks.registry import (
    attack_class,
    convert_setting,
    get_attack,
    list_attacks,
    setting_names,
    settings_from_strings,
)
from robustlab.attacks.spec import AttackSpec
from robustlab.attacks.square import Square
from robustlab.attacks.sweep import (
    SweepOptions,
    SweepResult,
    accuracy_from_min_eps,
    sweep,
    sweep_dataset,
)

__all__ = [
    "APGD",
    "APGDL2",
    "BPDA",
    "FAB",
    "FGM",
    "FGSM",
    "IFGSM",
    "MIFGSM",
    "PGD",
    "PGDL2",
    "APGDTargeted",
    "APGDTargetedL2",
    "Attack",
    "AttackSpec",
    "AutoAttack",
    "Batch",
    "CarliniWagnerL2",
    "DirectionAttack",
    "FilterAttack",
    "FilterResult",
    "GaussianNoise",
    "LogitsModel",
    "MinimalEps",
    "MinimumNormAttack",
    "SignNoise",
    "SoftmaxOutputWarning",
    "Square",
    "SweepOptions",
    "SweepResult",
    "accuracy_from_min_eps",
    "as_logits_model",
    "attack_class",
    "attack_mode",
    "convert_setting",
    "flat_norm",
    "get_attack",
    "label_loss",
    "list_attacks",
    "logits_from_output",
    "parse_eps",
    "parse_eps_list",
    "setting_names",
    "settings_from_strings",
    "sweep",
    "sweep_dataset",
]
