"""The study contract: what every study implements, checked by Python when a study is defined.

A study is a class deriving from ``Study[ItsConfig]``; its instance is registered by name in
``robustlab.studies.registry.STUDIES``. The runner calls it in this order::

    config = validate(study.config_type, values)   # pydantic: types, ranges, unknown keys
    study.check(config)                            # cross-field checks (names that must exist)
    steps = study.steps(config)                    # the resumable steps, run by ``run_steps``
    spec = study.report(config, results, run_dir)  # the report, from the recorded results
    printed = study.summary(config, results)       # what ``robustlab run`` prints (JSON)

``results`` is always the mapping of step name -> the JSON result that step recorded, read
back from its done-marker, so ``report`` and ``summary`` give the same answer for a fresh run
and for a resumed one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from robustlab.studies.config import StudyConfig
from robustlab.studies.runner import Step

if TYPE_CHECKING:
    from robustlab.reporting import ReportSpec

ConfigT = TypeVar("ConfigT", bound=StudyConfig)

# Step name -> that step's recorded JSON result.
StepResults = Mapping[str, Any]


class Study(ABC, Generic[ConfigT]):
    """One study: its config type and the four things the runner asks of it."""

    kind: ClassVar[str]  # the value of ``study:`` in its YAML files, e.g. "leaf"
    config_type: ClassVar[type[StudyConfig]]  # the pydantic class its YAML is validated into

    @abstractmethod
    def check(self, config: ConfigT) -> None:
        """Checks across fields, after validation; raise ``UserError`` naming the key."""

    @abstractmethod
    def steps(self, config: ConfigT) -> list[Step]:
        """The study's steps in order (the report step is appended by the runner)."""

    @abstractmethod
    def summary(self, config: ConfigT, results: StepResults) -> dict[str, Any]:
        """The JSON-able headline figures ``robustlab run`` prints when the study finishes."""

    @abstractmethod
    def report(self, config: ConfigT, results: StepResults, run_dir: Path) -> ReportSpec:
        """The report's sections, drawn from ``results`` and the step folders in ``run_dir``."""
