"""How much a robust accuracy can be trusted: the evaluation grade of an attack run.

Every result file that states a robust accuracy (``attack.json``, ``curves.json``) carries an
``evaluation`` entry, and every report shows it first::

    {"grade": "standard-autoattack" | "autoattack" | "white-box" | "black-box" | "random",
     "standard_autoattack": bool,
     "attacks": [{"name", "attack", "steps", "restarts", "queries", "top_k", "eot_samples"}],
     "robust_after": [{"attack": "APGD-CE", "robust_accuracy": [per eps]}, ...] | null,
     "statement": one line for the report}

Only ``standard-autoattack`` (``--attack autoattack`` with its default settings) is the number
to state as "the robust accuracy": every other grade is an upper bound that a stronger attack
may lower.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from robustlab.attacks.autoattack import ROBUST, AutoAttack
from robustlab.attacks.base import Attack

BUDGET_KEYS = ("steps", "restarts", "queries", "top_k", "eot_samples", "iterations")
GRADIENT_FREE = {"square"}
RANDOM = {"sign-noise", "gaussian-noise"}


def _budget(attack: Attack) -> dict[str, Any]:
    return {key: getattr(attack, key) for key in BUDGET_KEYS if hasattr(attack, key)}


def robust_after(attack: Attack, stage: Tensor | None) -> list[dict[str, Any]] | None:
    """Robust accuracy after each member of a cascade, per epsilon, from ``stage`` ``(E, N)``."""
    if stage is None or not isinstance(attack, AutoAttack) or stage.shape[1] == 0:
        return None
    rows = []
    for number, name in enumerate(attack.stage_names()):
        still = (stage == ROBUST) | (stage > number)  # not fooled by this member or earlier
        rows.append({"attack": name, "robust_accuracy": still.double().mean(1).tolist()})
    return rows


def evaluation_grade(
    attack: Attack, stage: Tensor | None = None, classes: int | None = None
) -> dict[str, Any]:
    """The ``evaluation`` entry of a result file for ``attack`` (see the module docstring);
    ``classes``: the model's class count (AutoAttack skips APGD-T below 4)."""
    if isinstance(attack, AutoAttack):
        summary = attack.grade(classes)
        members = summary["members"]
        standard = bool(summary["standard"])
        grade = "standard-autoattack" if standard else "autoattack"
        names = ", ".join(member["name"] for member in members if not member["skipped"])
        statement = (
            f"standard AutoAttack ({names}): the robust accuracy to report"
            if standard
            else f"{summary['suite']} with non-reference settings ({names}): compare with "
            "the standard suite before stating a robust accuracy"
        )
    else:
        members = [{"name": attack.name, "attack": attack.name, **_budget(attack)}]
        standard = False
        if attack.name in RANDOM:
            grade, kind = "random", "random noise"
        elif attack.name in GRADIENT_FREE:
            grade, kind = "black-box", "a single score-based attack"
        else:
            grade, kind = "white-box", "a single gradient attack"
        statement = (
            f"{kind} ({attack.name}): an upper bound on robust accuracy; state a robust "
            "accuracy with `robustlab evaluate --attack autoattack`"
        )
    return {
        "grade": grade,
        "standard_autoattack": standard,
        "attacks": members,
        "robust_after": robust_after(attack, stage),
        "statement": statement,
    }
