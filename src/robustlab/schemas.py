"""Schemas of the result files robustlab reads back (pydantic, as the study configs).

``robustlab report``, ``evaluate`` and the studies read JSON that a user may have edited or
planted. Each file is validated once, where it is read, against the shape its writer produces:
a wrong type, a missing or unknown key, a huge number or a path that leaves the folder becomes
one ``UserError`` line naming the file and the field, never a ``KeyError`` traceback later.
Free-form blocks (settings, data specs, flag details) stay plain mappings; their size and depth
are bounded by ``robustlab.io.read_json``.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from robustlab.errors import UserError
from robustlab.io import read_json

MAX_COUNT = 10**12  # images, classes, ... : larger is a planted number, not a result
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Finite = Annotated[float, Field(ge=-1e12, le=1e12, allow_inf_nan=False)]
Eps = Annotated[float, Field(ge=0.0, le=1e12, allow_inf_nan=False)]  # L2 budgets exceed 1
Text = Annotated[str, Field(max_length=10_000)]
Settings = dict[str, Any]


class Schema(BaseModel):
    """A record as its writer makes it: unknown keys are errors; keys the readers do not need
    may be missing (hand-made and older files)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Versioned(Schema):
    format_version: Literal[1]


class FlagRecord(Schema):
    code: Text
    severity: Literal["info", "warning", "error"]
    message: Text
    details: Settings = Field(default_factory=dict)


class PerClass(Schema):
    class_: Text = Field(alias="class")
    n: Count
    correct: Count
    accuracy: Fraction | None


class SplitMetrics(Schema):
    n: Count
    correct: Count
    accuracy: Fraction | None
    classes: list[Text]
    per_class: list[PerClass]
    confusion: list[list[Count]]


class MetricsFile(Versioned):
    format: Literal["robustlab-metrics"]
    run_dir: Text
    model: Settings
    data: Settings | None = None
    classes: list[Text] = Field(default_factory=list)
    splits: dict[Literal["train", "val", "test"], SplitMetrics]
    settings: Settings


class Curve(Schema):
    label: Text
    kind: Literal["white-box", "black-box", "noise"]
    source: Text | None
    accuracy: list[Fraction | None]


class RobustAfter(Schema):
    attack: Text
    robust_accuracy: list[Fraction | None]


class EvaluationGrade(Schema):
    """How much the robust accuracy can be trusted (``robustlab.evaluation.grade``)."""

    grade: Literal["standard-autoattack", "autoattack", "white-box", "black-box", "random"]
    standard_autoattack: bool
    attacks: list[Settings]
    robust_after: list[RobustAfter] | None = None
    statement: Text


class CurvesFile(Versioned):
    format: Literal["robustlab-curves"]
    target: Text
    attack: Settings
    epsilons: list[Eps]
    epsilons_255: list[Finite]
    n: Count
    clean_accuracy: Fraction
    curves: list[Curve]
    models: dict[str, Settings] = Field(default_factory=dict)
    eps0_accuracy: Fraction | None = None
    unbounded_accuracy: Fraction | None = None
    flags: list[FlagRecord] = Field(default_factory=list)
    settings: Settings = Field(default_factory=dict)
    evaluation: EvaluationGrade | None = None


class TransferFile(Versioned):
    format: Literal["robustlab-transfer"]
    models: list[Text]
    attack: Settings
    eps: Eps
    eps_255: Finite
    n: Count
    accuracy: list[list[Fraction | None]]
    clean_accuracy: dict[str, Fraction | None]
    flags: list[FlagRecord] = Field(default_factory=list)
    settings: Settings = Field(default_factory=dict)


class ExampleFigure(Schema):
    path: Text
    index: Count | None = None
    eps: Eps | None = None
    caption: Text = ""

    @field_validator("path")
    @classmethod
    def _stays_inside(cls, path: str) -> str:
        """A figure is a file beside examples.json: no absolute path, no '..'."""
        pure = PurePosixPath(path.replace("\\", "/"))
        if not path or pure.is_absolute() or ".." in pure.parts or os.path.isabs(path):
            raise ValueError("must be a relative path inside the results folder")
        return path


class ExamplesFile(Versioned):
    format: Literal["robustlab-examples"]
    figures: list[ExampleFigure]


class PerEps(Schema):
    eps: Eps
    eps_255: Finite
    n: Count
    accuracy: Fraction | None
    success_rate: Fraction | None
    mean_adv_conf: Fraction | None
    mean_l2: Finite | None
    median_l2: Finite | None
    max_linf: Finite | None


class MinEps(Schema):
    found: Count
    not_found: Count
    median: Eps | None
    mean: Eps | None


class RecordsSummaryFile(Versioned):
    format: Literal["robustlab-records-summary"]
    curve: Text
    n_images: Count
    per_eps: list[PerEps]
    min_eps: MinEps


class SavedAdversarial(Schema):
    index: Count
    label: Count
    png: Text
    pred_float: Count
    pred_png: Count
    adversarial_float: bool
    adversarial_png: bool


class AdversarialsFile(Versioned):
    format: Literal["robustlab-adversarials"]
    eps: Eps | None
    n: Count
    adversarial_float: Count
    adversarial_png: Count
    lost_by_quantisation: Count
    safetensors: Text
    classes: list[Text]
    images: list[SavedAdversarial]


def _where(loc: tuple[Any, ...]) -> str:
    """``('curves', 0, 'accuracy')`` -> ``curves[0].accuracy``."""
    text = ""
    for part in loc:
        name = _shown(part)
        text += f"[{part}]" if isinstance(part, int) else (f".{name}" if text else name)
    return text


def _shown(key: Any) -> str:
    """A key as it can stand in a one-line message (a newline in a planted key is escaped)."""
    key = str(key)
    return key if key.isprintable() else repr(key)[1:-1]


def describe(error: ValidationError) -> str:
    """The first problem as ``field a.b[0].c: message``, with a count of the others."""
    problems = error.errors(include_url=False)
    first = problems[0]
    loc = tuple(first["loc"])
    parent = f" in {_where(loc[:-1])}" if len(loc) > 1 else ""
    if first["type"] == "extra_forbidden":
        text = f"unknown key '{_shown(loc[-1])}'{parent}"
    elif first["type"] == "missing":
        text = f"missing key '{_shown(loc[-1])}'{parent}"
    else:
        got = first.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {str(got)[:60]!r})"
        message = " ".join(first["msg"][:160].split())
        text = f"field {_where(loc) or 'top level'}: {message}{shown}"
    more = len(problems) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def validate_record(data: Any, schema: type[Schema], what: str) -> dict[str, Any]:
    """``data`` checked against ``schema``; returned as it was (a plain dict)."""
    try:
        schema.model_validate(data)
    except ValidationError as error:
        raise UserError(f"{what}: {describe(error)}") from None
    return data


def read_record(path: str | os.PathLike[str], schema: type[Schema]) -> dict[str, Any]:
    """Read a JSON result file and validate it against ``schema``."""
    path = Path(path)
    return validate_record(read_json(path, what="result file"), schema, str(path))


class RunConfigFile(Versioned):
    """A run's ``config.json``: the keys every run has are checked; callers of
    ``save_checkpoint`` may add their own blocks, so other keys are allowed."""

    model_config = ConfigDict(extra="allow", frozen=True)
    format: Literal["robustlab-run"]
    robustlab_version: Text
    model: Settings
    classes: list[Text] = Field(default_factory=list, max_length=MAX_COUNT)
    data: Settings | None = None


def inside(path: Path, root: Path, what: str) -> Path:
    """``path`` when it resolves (links followed) to a file inside ``root``; else refused, so
    that no result file can make robustlab read, and embed, a file from elsewhere."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise UserError(
            f"{what}: {path} leads outside {root}; only files inside the folder are read"
        )
    return resolved
