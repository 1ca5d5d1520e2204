"""Studies: the source documents' experiments as typed, resumable, one-command runs with a report.

>>> study = load_study("leaf", ["data.limit=300", "models.*.epochs=1"])  # doctest: +SKIP
>>> results = run_study(resolve_data(study), "runs/leaf-small")  # doctest: +SKIP

Presets live in ``presets/*.yaml``; a user's own YAML file with the same keys works the same way.
"""

from robustlab.studies.config import (
    AttackConfig,
    DataConfig,
    DefenceConfig,
    ModelConfig,
    StudyConfig,
    apply_overrides,
)
from robustlab.studies.protocol import Study
from robustlab.studies.registry import STUDIES
from robustlab.studies.runner import Step, StepContext, prepare_run_dir, run_steps
from robustlab.studies.study import (
    LoadedStudy,
    list_presets,
    load_study,
    resolve_data,
    run_study,
)

__all__ = [
    "STUDIES",
    "AttackConfig",
    "DataConfig",
    "DefenceConfig",
    "LoadedStudy",
    "ModelConfig",
    "Step",
    "StepContext",
    "Study",
    "StudyConfig",
    "apply_overrides",
    "list_presets",
    "load_study",
    "prepare_run_dir",
    "resolve_data",
    "run_steps",
    "run_study",
]
