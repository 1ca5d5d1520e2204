"""AutoAttack: the standard ensemble (APGD-CE, APGD-T, FAB-T, Square) as one cascaded attack.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, https://arxiv.org/abs/2003.01690. Threat model: Linf ball
of radius ``eps`` in [0, 1] pixel units, untargeted; white-box members plus one black-box
member (Square), so a model that masks its gradients is still caught.

The members run in order, each only on the samples that every earlier member (and the clean
image) failed to fool; a sample's result is the first adversarial found. Through ``sweep`` it
works at any list of epsilons (per-sample worst case over the smaller ones), and
``ModelView.stage`` reports which member fooled each sample, from which attack.json and the
report give "robust after APGD-CE: x, after APGD-T: y, ...".

Versions (as the reference package):

* ``standard``: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000 queries), one
  restart each, 100 steps: the evaluation RobustBench reports.
* ``plus``: APGD-CE and APGD-DLR with 5 restarts, untargeted FAB with 5 restarts, Square,
  then APGD-T and FAB-T (one restart each), in the reference's order.
* ``rand``: for randomised models: APGD-CE and APGD-DLR with EOT over ``eot_samples``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import Tensor

from robustlab.attacks.apgd import APGD
from robustlab.attacks.apgd_targeted import APGDTargeted, clean_logits
from robustlab.attacks.base import (
    Attack,
    Batch,
    check_choice,
    check_int,
    check_steps,
    is_success,
)
from robustlab.attacks.batched import BatchedAttack
from robustlab.attacks.fab import FAB
from robustlab.attacks.square import Square

logger = logging.getLogger(__name__)

VERSIONS = ("standard", "plus", "rand")
ROBUST = -2  # stage code of a sample no member fooled (see AutoAttack.stage_names)
CLEAN = -1  # stage code of a sample misclassified before any attack


@dataclasses.dataclass(frozen=True, kw_only=True)
class AutoAttack(BatchedAttack):
    """The AutoAttack ensemble as a cascade on the still-robust samples (Linf).

    Args:
        eps: Linf radius in [0, 1] pixel units.
        version: 'standard', 'plus' or 'rand' (see the module docstring).
        steps: iterations of APGD and FAB (100 in the reference).
        top_k: target classes of APGD-T and FAB-T (9 in the reference; lowered to the
            model's classes - 1 on smaller models, as the reference does).
        queries: Square's query budget per image (5000 in the reference).
        eot_samples: EOT gradient samples of the ``rand`` version (20 in the reference).
    """

    name = "autoattack"
    norm = "linf"

    eps: float = 8 / 255
    version: str = "standard"
    steps: int = 100
    top_k: int = 9
    queries: int = 5000
    eot_samples: int = 20

    def _validate(self) -> None:
        super()._validate()
        check_choice(self._field("version"), self.version, VERSIONS)
        check_steps(self._field("steps"), self.steps)
        check_int(self._field("top_k"), self.top_k, 1)
        check_steps(self._field("queries"), self.queries)
        check_int(self._field("eot_samples"), self.eot_samples, 1)

    def members(self, classes: int | None = None) -> list[tuple[str, Attack | None]]:
        """The cascade's ``(stage name, attack)`` pairs, in order, at this attack's eps.

        With ``classes`` (the model's), members that cannot apply to it are ``None`` (skipped).
        """
        top_k = self.top_k if classes is None else max(1, min(self.top_k, classes - 1))
        common: dict[str, Any] = {"eps": self.eps, "seed": self.seed, "train_mode": "keep"}
        apgd = {**common, "steps": self.steps}
        if self.version == "rand":
            return [
                ("APGD-CE", APGD(**apgd, loss="ce", eot_samples=self.eot_samples)),
                ("APGD-DLR", APGD(**apgd, loss="dlr", eot_samples=self.eot_samples)),
            ]
        fab_t = FAB(**apgd, top_k=top_k)
        square = Square(**common, queries=self.queries)
        targeted = None  # kept as None when it cannot apply, so stage indices stay aligned
        if classes is None or classes >= 4:
            targeted = APGDTargeted(**apgd, top_k=top_k)
        else:
            logger.warning(
                "autoattack: APGD-T is skipped on a %d-class model (targeted DLR needs >= 4 "
                "classes); this is not a standard AutoAttack evaluation",
                classes,
            )
        if self.version == "plus":
            return [
                ("APGD-CE", APGD(**apgd, loss="ce", restarts=5)),
                ("APGD-DLR", APGD(**apgd, loss="dlr", restarts=5)),
                ("FAB", FAB(**apgd, targeted=False, restarts=5)),
                ("Square", square),
                ("APGD-T", targeted),
                ("FAB-T", fab_t),
            ]
        return [
            ("APGD-CE", APGD(**apgd)),
            ("APGD-T", targeted),
            ("FAB-T", fab_t),
            ("Square", square),
        ]

    def stage_names(self) -> list[str]:
        """Names of the members, in cascade order (``ModelView.stage`` indexes this list)."""
        return [name for name, _ in self.members()]

    def grade(self, classes: int | None = None) -> dict[str, Any]:
        """What this evaluation ran: members with their steps/restarts/queries, and whether it
        is the standard AutoAttack evaluation (reference settings, every member applied)."""
        members = []
        for (stage, attack), (_, applied) in zip(
            self.members(), self.members(classes), strict=True
        ):
            budget = {
                key: getattr(attack, key)
                for key in ("steps", "restarts", "top_k", "queries", "eot_samples")
                if hasattr(attack, key)
            }
            members.append(
                {"name": stage, "attack": attack.name, **budget, "skipped": applied is None}
            )  # type: ignore[union-attr]
        reference = (self.steps, self.top_k, self.queries) == (100, 9, 5000)
        every = not any(member["skipped"] for member in members)
        standard = self.version == "standard" and reference and every
        return {"suite": f"autoattack-{self.version}", "members": members, "standard": standard}

    def _attack(
        self, batch: Batch, eps: Tensor, generator: torch.Generator | None, stop_on_success: bool
    ) -> tuple[Tensor, Tensor]:
        view, x, y, target = batch.view, batch.x, batch.y, batch.target
        clean = clean_logits(view, x, self.name, target)
        pred = clean.argmax(1)
        out = x.clone()
        stage = torch.where(is_success(pred, y, target), CLEAN, ROBUST)
        radius = float(eps.max()) if eps.numel() else self.eps
        for number, (_, member) in enumerate(
            dataclasses.replace(self, eps=radius).members(clean.shape[1])
        ):
            todo = (stage == ROBUST).nonzero().squeeze(1)
            if not todo.numel():
                break
            if member is None:
                continue
            sub_t = None if target is None else target[todo]
            adv, adv_pred = member._perturb(
                view, x[todo], y[todo], sub_t, eps[todo], generator, True
            )
            if adv_pred is None:
                adv_pred = view.predict(adv)
            hit = is_success(adv_pred, y[todo], sub_t)
            fooled = todo[hit]
            out[fooled], pred[fooled], stage[fooled] = adv[hit], adv_pred[hit], number
        view.stage = stage
        return out, pred
