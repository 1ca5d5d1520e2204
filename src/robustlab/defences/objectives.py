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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab.defences.config import (
    DefenceConfig,
    FastFGSMConfig,
    NSLConfig,
    PGDTrainingConfig,
    TRADESConfig,
)
from robustlab.defences.perturb import perturb, random_in_ball
from robustlab.training.loop import cross_entropy_objective
from robustlab.training.modes import eval_mode

log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT", bound=DefenceConfig)

# TRADES' initial jitter around the clean input (official code: 0.001 * randn).
TRADES_INIT_STD = 0.001


class DefenceObjective(Generic[ConfigT]):
    """Base of every defence: warm-up, the BatchNorm policy, and the plain-loss fallback."""

    config_type: ClassVar[type[DefenceConfig]]

    def __init__(self, config: ConfigT) -> None:
        if not isinstance(config, self.config_type):
            raise TypeError(f"{type(self).__name__} needs a {self.config_type.__name__}")
        self.config = config
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
        raise NotImplementedError

    def _inactive(self) -> bool:
        """True when the adversarial term has zero weight: skip crafting, train plainly."""
        return False


class PGDTraining(DefenceObjective[PGDTrainingConfig]):
    """Madry et al.: minimise the cross-entropy on PGD adversarial examples only."""

    config_type = PGDTrainingConfig

    def _craft(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        # the evaluation's own attack (robustlab.attacks), so training and evaluation agree
        return self.config.crafting_attack()(model, x, y)

    def adversarial_loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x_adv), y)


class FastFGSMTraining(DefenceObjective[FastFGSMConfig]):
    """Wong et al.: one FGSM step from a uniform random start in the L-inf ball."""

    config_type = FastFGSMConfig

    def _craft(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.config.crafting_attack()(model, x, y)

    def adversarial_loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x_adv), y)


class TRADESTraining(DefenceObjective[TRADESConfig]):
    """Zhang et al.: clean cross-entropy plus beta * KL(clean || adversarial) predictions."""

    config_type = TRADESConfig

    def _inactive(self) -> bool:
        return self.config.beta == 0

    def _craft(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        c = self.config
        with torch.no_grad():
            clean = F.softmax(model(x), dim=1)  # (B, K), fixed target of the inner maximisation

        def kl_to_clean(logits: Tensor) -> Tensor:
            return F.kl_div(F.log_softmax(logits, dim=1), clean, reduction="sum")

        return perturb(
            model,
            x,
            kl_to_clean,
            step_size=c.effective_step_size,
            steps=c.steps,
            norm=c.norm,
            radius=c.eps,
            start=TRADES_INIT_STD * torch.randn_like(x),
        )

    def adversarial_loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        logits = model(x)
        robust = F.kl_div(
            F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean"
        )
        return F.cross_entropy(logits, y) + self.config.beta * robust


class NSLAdversarialRegularization(DefenceObjective[NSLConfig]):
    """NSL: supervised loss + multiplier * the same loss on adversarial neighbours.

    The neighbour follows ``nsl.lib.gen_adv_neighbor``: the first step uses the gradient of the
    labeled loss (batch-mean cross-entropy) at the clean input, each further step (PGD) the same
    loss at the current neighbour; a step adds ``adv_step_size`` times the gradient normalised
    per example over all features; the result is projected into the ``pgd_epsilon`` ball (if
    set) and clipped to [clip_value_min, clip_value_max] (if set) after every step.
    """

    config_type = NSLConfig

    def _inactive(self) -> bool:
        return self.config.multiplier == 0

    def _craft(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        c = self.config
        start = random_in_ball(x, c.pgd_epsilon, c.adv_grad_norm) if c.random_init else None
        return perturb(
            model,
            x,
            lambda logits: F.cross_entropy(logits, y),
            step_size=c.adv_step_size,
            steps=c.pgd_iterations,
            norm=c.adv_grad_norm,
            radius=c.pgd_epsilon,
            start=start,
            clip=(c.clip_value_min, c.clip_value_max),
        )

    def adversarial_loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        labeled = F.cross_entropy(model(x), y)
        return labeled + self.config.multiplier * F.cross_entropy(model(x_adv), y)
