"""Defences as training objectives ``objective(model, x, y, epoch) -> loss``.

A defence is only a training loss: the lead's ``fit`` calls it once per batch and does the
backward pass and the optimiser step, so a defended model saves, loads and evaluates like any
other run.

BatchNorm policy (every defence):

* adversarial examples are crafted with the whole model in eval mode (``eval_mode``): BatchNorm
  normalises with its running statistics and does **not** update them, dropout is off, and the
  gradient is taken with respect to the input only (``torch.autograd.grad``), so crafting leaves
  no gradient in any parameter;
* the loss of the update step is computed in the mode ``fit`` set (train mode, with the
  BatchNorm layers of frozen parts kept in eval by ``set_train_mode``), so only the forward
  passes of the final loss update BatchNorm statistics, exactly as in plain training.

With ``frozen`` training the adversary still attacks the whole model (pixels in, logits out):
only the head learns, against examples crafted through the frozen backbone.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Generic, TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.attacks import DirectionAttack
from robustlab.defences.config import (
    DefenceConfig,
    FastFGSMConfig,
    NSLConfig,
    PGDTrainingConfig,
    TRADESConfig,
)
from robustlab.training.loop import cross_entropy_objective
from robustlab.training.modes import eval_mode

log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=DefenceConfig)


class DefenceObjective(Generic[ConfigT]):
    """Base of every defence: warm-up, the BatchNorm policy, and the plain-loss fallback.

    ``attack`` is the ``robustlab.attacks`` attack built from the config's ``crafting_spec()``:
    every defence crafts its examples with it, the code path that evaluation runs.
    """

    config_type: ClassVar[type[DefenceConfig]]

    def __init__(self, config: ConfigT) -> None:
        if not isinstance(config, self.config_type):
            raise TypeError(f"{type(self).__name__} needs a {self.config_type.__name__}")
        self.config = config
        self.attack = config.crafting_spec().build()
        self._announced = False

    @property
    def name(self) -> str:
        return self.config.name

    def settings(self) -> dict:
        """JSON-able resolved settings (what a run's config.json stores under "defence")."""
        return self.config.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.resolved()!r})"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> Tensor:
        """Scalar training loss of one batch. x: (B, C, H, W) in [0, 1]; y: (B,) labels;
        epoch: 1-based. Epochs <= ``warmup_epochs`` get the plain cross-entropy."""
        if epoch <= self.config.warmup_epochs or self._inactive():
            return cross_entropy_objective(model, x, y, epoch)
        if not self._announced:
            log.info("defence %s: adversarial term active from epoch %d", self.name, epoch)
            self._announced = True
        x_adv = self.craft(model, x, y)
        return self.adversarial_loss(model, x, x_adv, y)

    def craft(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial inputs (B, C, H, W) for this batch, crafted in eval mode, detached."""
        with eval_mode(model):
            return self._craft(model, x.detach(), y).detach()

    def adversarial_loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        """The defended loss given the crafted inputs, in the model's current (training) mode."""
        raise NotImplementedError

    def _craft(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.attack(model, x, y)

    def _inactive(self) -> bool:
        """True when the adversarial term has zero weight: skip crafting, train plainly."""
        return False


class PGDTraining(DefenceObjective[PGDTrainingConfig]):
    """Madry et al.: minimise the cross-entropy on adversarial examples only (by default PGD's,
    the evaluation's own attack, so training and evaluation agree)."""

    config_type = PGDTrainingConfig

    def adversarial_loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x_adv), y)


class FastFGSMTraining(PGDTraining):
    """Wong et al.: one FGSM step from a uniform random start in the L-inf ball."""

    config_type = FastFGSMConfig


class TRADESTraining(DefenceObjective[TRADESConfig]):
    """Zhang et al.: clean cross-entropy plus beta * KL(clean || adversarial) predictions.

    The examples maximise the KL term: PGD with ``loss='kl'`` from a 0.001 Gaussian jitter.
    """

    config_type = TRADESConfig

    def _inactive(self) -> bool:
        return self.config.beta == 0

    def adversarial_loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        logits = model(x)
        robust = F.kl_div(
            F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean"
        )
        return F.cross_entropy(logits, y) + self.config.beta * robust


class NSLAdversarialRegularization(DefenceObjective[NSLConfig]):
    """NSL: supervised loss + multiplier * the same loss on adversarial neighbours.

    The neighbour follows ``nsl.lib.gen_adv_neighbor``: one step of ``adv_step_size`` along
    the gradient of the labeled loss at the clean input, normalised per example over all
    features (FGM's direction for 'l2', FGSM's sign for 'linf'), projected into the
    ``pgd_epsilon`` ball if set; more steps are PGD's. The result is clipped to
    [clip_value_min, clip_value_max] where set.
    """

    config_type = NSLConfig

    def _inactive(self) -> bool:
        return self.config.multiplier == 0

    def _craft(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        c = self.config
        if c.one_step:  # NSL's step is not kept in [0, 1]: only the direction is the attack's
            assert isinstance(self.attack, DirectionAttack)
            neighbour = x + self.attack.eps * self.attack.direction(model, x, y)
        else:
            neighbour = self.attack(model, x, y)
        if c.clip_value_min is None and c.clip_value_max is None:
            return neighbour
        return neighbour.clamp(c.clip_value_min, c.clip_value_max)

    def adversarial_loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        labeled = F.cross_entropy(model(x), y)
        return labeled + self.config.multiplier * F.cross_entropy(model(x_adv), y)


# Each defence config's training objective.
OBJECTIVES: dict[type[DefenceConfig], type[DefenceObjective]] = {
    objective.config_type: objective
    for objective in (PGDTraining, FastFGSMTraining, TRADESTraining, NSLAdversarialRegularization)
}
