"""The studies ``robustlab run`` knows, by the name a study file gives in its ``study:`` key.

Registered explicitly: a new study is a ``Study`` subclass (see ``protocol.py``) added here.
"""

from __future__ import annotations

from typing import Any

from robustlab.errors import UserError, unknown_name
from robustlab.studies.adversarial_regularisation import AdversarialRegularisationStudy
from robustlab.studies.layer_transfer import LayerTransferStudy
from robustlab.studies.leaf import LeafStudy
from robustlab.studies.protocol import Study
from robustlab.studies.targeted_face import TargetedFaceStudy

STUDIES: dict[str, Study[Any]] = {
    study.kind: study
    for study in (
        LeafStudy(),
        LayerTransferStudy(),
        TargetedFaceStudy(),
        AdversarialRegularisationStudy(),
    )
}


def get_study(kind: str, source: str = "study") -> Study[Any]:
    """The registered study ``kind``; an unknown one is a ``UserError`` naming ``source``."""
    if kind not in STUDIES:
        raise UserError(f"{source}: {unknown_name('study', kind, STUDIES)}")
    return STUDIES[kind]
