"""Adversarial defences as training objectives: PGD-AT, fast FGSM-AT, TRADES, NSL.

Command line: ``robustlab train ... --defence NAME --defence-opt key=value`` calls
``build_defence``. Study files hold a ``DefenceSpec`` (name + settings; it holds the
``AttackSpec`` that crafts the examples). Library: build a typed config and call
``make_defence``::

    objective = make_defence(PGDTrainingConfig(eps=0.1, steps=10, warmup_epochs=1))
    fit(model, train, val, TrainConfig(...), objective)

Every defence crafts its examples with ``robustlab.attacks`` (``objective.attack``): PGD-AT
with the evaluation's PGD (or any fixed-budget gradient attack of the registry), fast-AT with
one PGD step, TRADES with PGD on the KL loss, NSL with FGM / FGSM (PGD for several steps).
See ``robustlab.defences.objectives`` for the BatchNorm policy (craft in eval mode, update in
train mode) and ``robustlab.defences.config`` for every setting, its units and its default.

Pretrained backbones: fine-tune adversarially from a clean start, never from a random head.
Use ``--strategy finetune --head-epochs k`` with ``warmup_epochs=k`` (the head is trained
clean first, the whole network adversarially after), a small backbone learning rate
(``--finetune-lr-factor 0.1``) and an eps matched to natural images (2/255 to 8/255).
"""

from robustlab.defences.config import (
    DefenceConfig,
    FastFGSMConfig,
    NSLConfig,
    PGDTrainingConfig,
    TRADESConfig,
)
from robustlab.defences.objectives import (
    DefenceObjective,
    FastFGSMTraining,
    NSLAdversarialRegularization,
    PGDTraining,
    TRADESTraining,
)
from robustlab.defences.registry import (
    build_defence,
    defence_config_type,
    defence_from_dict,
    describe_defences,
    list_defences,
    make_defence,
    parse_options,
)
from robustlab.defences.spec import DefenceSpec

__all__ = [
    "DefenceConfig",
    "DefenceObjective",
    "DefenceSpec",
    "FastFGSMConfig",
    "FastFGSMTraining",
    "NSLAdversarialRegularization",
    "NSLConfig",
    "PGDTraining",
    "PGDTrainingConfig",
    "TRADESConfig",
    "TRADESTraining",
    "build_defence",
    "defence_config_type",
    "defence_from_dict",
    "describe_defences",
    "list_defences",
    "make_defence",
    "parse_options",
]
