"""Typed study configs: pydantic models with ``extra='forbid'``, YAML loading and ``--set`` overrides.

A study config is validated once, before any step runs; every problem becomes ONE ``UserError``
line that names the file and the key, e.g.
``leaf.yaml: unknown key 'epochz' in models[0] (did you mean 'epochs'?)``.

The building blocks here (``DataConfig``, ``ModelConfig``, ``AttackConfig``) are shared by every
study; each study module defines its own top-level config class from them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from robustlab.attacks.spec import AttackSpec as AttackConfig  # the attacks package's spec
from robustlab.budgets import budgets, check_budget
from robustlab.data.spec import DataSpec
from robustlab.defences.spec import DefenceSpec as DefenceConfig  # the defences package's spec
from robustlab.errors import UserError, suggestion
from robustlab.io import too_deep
from robustlab.models.classifier import FROM_DATA, ModelSpec
from robustlab.specs import phrase_problem, read_number, spec_fields, spec_values
from robustlab.training.config import TrainSpec

T = typing.TypeVar("T")

log = logging.getLogger(__name__)

Name = typing.Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=60)]


class Strict(BaseModel):
    """Base of every config block: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def spec_block(
    *specs: type, exclude: Sequence[str] = (), first: Mapping[str, Any] | None = None
) -> type[Strict]:
    """A config block whose fields are the specs' own (type, default, range, help), so a study
    file takes exactly what the specs take; ``first``: block-only fields, listed first.

    The block checks itself by building each spec (cross-field rules, budgets), and
    ``block.build(SpecClass)`` returns that spec.
    """
    fields: dict[str, Any] = {name: (annotation, ...) for name, annotation in (first or {}).items()}
    for cls in specs:
        fields |= {
            name: (info.annotation, info)
            for name, info in spec_fields(cls).items()
            if name not in exclude
        }
    base = create_model(  # type: ignore[call-overload]
        "_".join(cls.__name__ for cls in specs) + "Fields", __base__=_SpecBlock, **fields
    )
    base.specs = specs
    return base


class _SpecBlock(Strict):
    specs: typing.ClassVar[tuple[type, ...]] = ()

    @model_validator(mode="after")
    def _specs_accept(self) -> _SpecBlock:
        for cls in self.specs:
            self.build(cls)
        return self

    def build(self, cls: type[T]) -> T:
        """The ``cls`` spec of this block (fields the block lacks keep the spec's defaults)."""
        return cls(**spec_values(cls, dict(self)))


class DataConfig(spec_block(DataSpec)):  # type: ignore[misc]
    """A data set and its split: exactly ``DataSpec``'s fields."""

    def spec(self) -> DataSpec:
        return self.build(DataSpec)


class ModelConfig(  # type: ignore[misc]
    spec_block(ModelSpec, TrainSpec, exclude=FROM_DATA, first={"name": Name})
):
    """One model of a study: the ``ModelSpec`` fields the data does not fix, the ``TrainSpec``
    fields, and an optional defence; flat in YAML (``models[0].epochs``)."""

    # ModelSpec requires ``arch``; here it is required unless ``run`` is given
    arch: str | None = None  # type: ignore[assignment]
    run: Path | None = None  # a run folder (robustlab train / import); excludes every other field
    defence: DefenceConfig | None = None

    @model_validator(mode="after")
    def _specs_accept(self) -> ModelConfig:
        """Either an architecture to train (its specs must accept the block) or an existing
        run folder, never both."""
        if self.run is None:
            if self.arch is None:
                raise UserError("missing key 'arch' (or 'run': an existing run folder)")
            return super()._specs_accept()
        fields = type(self).model_fields
        given = [
            key
            for key, info in fields.items()
            if key not in ("name", "run")
            and getattr(self, key) != info.get_default(call_default_factory=True)
        ]
        if given:
            raise UserError(
                f"run: a run folder is loaded as it is; remove {', '.join(given)} "
                "(architecture and training settings)"
            )
        from robustlab.models.checkpoint import read_run_config

        try:
            read_run_config(self.run)
        except UserError as error:
            raise UserError(f"run: {error}") from None
        return self

    def describe(self) -> str:
        """The architecture, or where a loaded run comes from (for tables and titles)."""
        return self.arch if self.arch is not None else f"run {self.run}"

    def model_spec(self) -> ModelSpec:
        """The architecture; class count, channels and input size are filled from the data."""
        if self.arch is None:
            raise UserError(f"model '{self.name}' is loaded from {self.run}; it has no spec to build")
        return self.build(ModelSpec)

    def train_config(self) -> TrainSpec:
        return self.build(TrainSpec)


class CurvesConfig(Strict):
    """Accuracy vs epsilon of one target: white-box, black-box from ``surrogates``, and noise."""

    name: Name  # names the step (``attack-<name>``) and the report section
    attack: AttackConfig
    eps: list[float] = Field(min_length=1)
    target: str | None = None  # a model's name; None = the study's target
    surrogates: list[str] | None = None  # black-box sources (model names); None = the study's
    noise: bool = True  # the random-noise baseline with the same budget
    limit: int | None = Field(default=None, ge=1)  # first N test images (None = all)
    examples: int = Field(default=2, ge=0)  # triptych + prediction-vector figures
    sanity: bool = True  # model probes (softmax outputs, zero gradients) and curve checks
    unbounded_check: bool = False  # PGD at eps = 1 must reach ~0 %; costs 20 attack passes

    @field_validator("eps")
    @classmethod
    def _eps_in_range(cls, eps: list[float]) -> list[float]:
        check_budget("eps_values", len(eps), "eps: the number of epsilons")
        for value in eps:
            if not 0.0 <= value <= 1.0:
                raise UserError(
                    f"eps must be in [0, 1] pixel units (8/255 = 0.0314), got {value:g}"
                )
        return eps


class TransferConfig(Strict):
    """The transfer matrix: every model attacks every other at one epsilon."""

    attack: AttackConfig
    eps: float = Field(ge=0.0, le=1.0)
    models: list[str] | None = None  # None = every model of the study
    limit: int | None = Field(default=None, ge=1)


class StudyConfig(Strict):
    """Fields every study has; a study's own config class adds its sections."""

    study: str
    title: str = ""
    seed: int = Field(
        default=0, ge=0, description="seeds every step (attacks' random starts, noise)"
    )
    data: DataConfig
    fallback_data: DataConfig | None = None  # used, with a one-line note, when `data` is missing
    notes: list[str] = Field(default_factory=list)  # filled by the runner (e.g. a data fallback)
    eval_batch_size: int = Field(default=100, ge=1)


# --------------------------------------------------------------------------------------------
# Loading


class _StudyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting duplicate keys (PyYAML keeps the last one silently)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    self.duplicates.append((key_node.value, key_node.start_mark.line + 1))
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML safely within the node and nesting budgets; warn about duplicate keys."""
    loader = _StudyLoader(text)
    try:
        values = loader.get_single_data()
    except RecursionError:
        raise too_deep(source) from None
    finally:
        loader.dispose()
    for key, line in loader.duplicates:
        log.warning("%s: line %d repeats key '%s'; the last value is used", source, line, key)
    check_expanded_size(values, source)
    return values


def check_expanded_size(values: Any, source: str) -> None:
    """Refuse YAML whose aliases expand beyond the ``yaml_nodes`` budget (a billion-laughs
    file is a few lines that copy into 10^9 values) or that nest too deeply or refer to
    themselves; counted over shared values once each, so the check itself stays cheap."""
    limits = budgets()
    sizes: dict[int, tuple[int, int]] = {}  # id -> (expanded values, height)
    active: set[int] = set()

    def measure(value: Any, depth: int) -> tuple[int, int]:
        if not isinstance(value, dict | list):
            return 1, 0
        key = id(value)
        if key in active:
            raise UserError(f"{source}: a YAML alias refers to itself (a recursive value)")
        if key not in sizes:
            if depth >= limits.nesting_depth:
                raise too_deep(source)
            active.add(key)
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            measured = [measure(item, depth + 1) for item in items]
            active.discard(key)
            size = 1 + sum(count for count, _ in measured)
            check_budget(
                "yaml_nodes", size, f"{source}: the number of values once YAML aliases expand"
            )
            sizes[key] = size, 1 + max((height for _, height in measured), default=0)
        if depth + sizes[key][1] > limits.nesting_depth:
            raise too_deep(source)
        return sizes[key]

    measure(values, 0)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML (or JSON) mapping from ``path``; syntax errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"study file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read study file {path}: {error}") from None
    try:
        values = load_yaml_text(text, path.name)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"{path.name}:{where} invalid YAML: {problem}") from None
    if not isinstance(values, dict):
        raise UserError(
            f"{path.name}: a study file must be a mapping of keys, got {type(values).__name__}"
        )
    return values


def validate(cls: type[Strict], values: Mapping[str, Any], source: str) -> Any:
    """``cls.model_validate(values)`` with any error turned into one ``UserError`` line."""
    try:
        return cls.model_validate(dict(values))
    except ValidationError as error:
        raise UserError(f"{source}: {describe_validation_error(error, cls)}") from None


def describe_validation_error(error: ValidationError, cls: type[BaseModel]) -> str:
    """The first problem of ``error`` as one readable phrase, with a count of the others."""
    problems = error.errors(include_url=False)
    first = problems[0]
    loc = tuple(first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        parent, key = loc[:-1], str(loc[-1])
        where = f" in {format_loc(parent)}" if parent else ""
        message = f"unknown key '{key}'{where}{suggestion(key, fields_at(cls, parent))}"
    elif kind == "missing":
        parent = loc[:-1]
        where = f" in {format_loc(parent)}" if parent else ""
        message = f"missing key '{loc[-1]}'{where}"
    else:
        where = format_loc(loc) or "config"
        cause = first.get("ctx", {}).get("error")
        own = isinstance(cause, UserError)  # a spec's own check: keep its words, add the place
        message = f"{where}: {cause}" if own else phrase_problem(first, f"{where}:")
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return message


def format_loc(loc: Sequence[Any]) -> str:
    """``('models', 0, 'epochs')`` -> ``models[0].epochs``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to X."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = models[0] if models else args[0]
        else:
            return annotation


def fields_at(cls: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Valid keys of the config block at ``loc`` (empty when it is not a config block)."""
    annotation: Any = cls
    for part in loc:
        annotation = _unwrap(annotation)
        origin = typing.get_origin(annotation)
        if origin in (list, tuple, dict) or isinstance(part, int):
            args = typing.get_args(annotation)
            if not args:
                return []
            annotation = args[-1]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


# --------------------------------------------------------------------------------------------
# Overrides: --set key.sub=value

_INDEX = re.compile(r"\[([^\]]*)\]")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'models.finetune.epochs=2'`` -> (['models', 'finetune', 'epochs'], 2).

    The value is read as YAML (numbers, ``null``, ``true``, ``[0.01, 0.03]``); list items are
    addressed by index, by their ``name`` or by ``*`` (every item); ``models[0]`` works too.
    """
    key, sep, raw = text.partition("=")
    key = _INDEX.sub(r".\1", key.strip())
    parts = [part.strip() for part in key.split(".")]
    if not sep or not all(parts):
        raise UserError(f"--set needs KEY.SUB=VALUE (e.g. models.finetune.epochs=2), got '{text}'")
    try:
        value = load_yaml_text(raw, f"--set {key}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # a plain string that YAML cannot parse, e.g. 'a: b'
    return parts, _numbers(value)


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string, and ``8/255`` is handy for epsilons: make both numbers."""
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    if isinstance(value, str):
        number = read_number(value)
        return value if number is None else number
    return value


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A deep copy of ``values`` with every ``KEY.SUB=VALUE`` override applied, in order."""
    result = _deep_copy(values)
    for text in overrides:
        parts, value = parse_override(text)
        for container in _targets(result, parts[:-1], parts, text):
            _assign(container, parts[-1], value, text)
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value


def _targets(root: Any, path: list[str], full: list[str], text: str) -> Iterator[Any]:
    """Every container that ``path`` leads to (several with ``*``); missing dicts are created."""
    nodes = [root]
    for depth, part in enumerate(path):
        next_nodes = []
        for node in nodes:
            if isinstance(node, list):
                next_nodes.extend(_list_items(node, part, full[: depth + 1], text))
            elif isinstance(node, dict):
                if part == "*":
                    next_nodes.extend(node.values())
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    next_nodes.append(node[part])
            else:
                where = ".".join(full[:depth])
                raise UserError(f"--set {text}: '{where}' is a value, not a section")
        nodes = next_nodes
    yield from nodes


def _list_items(items: list[Any], part: str, where: list[str], text: str) -> list[Any]:
    if part == "*":
        return items
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(items) <= index < len(items):
            raise UserError(
                f"--set {text}: {'.'.join(where[:-1])} has {len(items)} items, no [{index}]"
            )
        return [items[index]]
    named = [item for item in items if isinstance(item, dict) and item.get("name") == part]
    if not named:
        names = [
            str(item.get("name")) for item in items if isinstance(item, dict) and "name" in item
        ]
        raise UserError(
            f"--set {text}: no item named '{part}' in {'.'.join(where[:-1])}"
            f"{suggestion(part, names)}; use an index or one of: {', '.join(names) or '(none)'}"
        )
    return named


def _assign(container: Any, key: str, value: Any, text: str) -> None:
    if isinstance(container, dict):
        container[key] = value
    elif isinstance(container, list):
        if key == "*":
            container[:] = [_deep_copy(value) for _ in container]
        elif key.lstrip("-").isdigit():
            _list_items(container, key, [key], text)  # range check
            container[int(key)] = value
        else:
            raise UserError(f"--set {text}: '{key}' must be an index or '*' of a list")
    else:
        raise UserError(f"--set {text}: cannot set '{key}' inside a value")


def to_plain(config: BaseModel) -> dict[str, Any]:
    """The JSON-able form of a config, as written to ``config.json`` / ``config.yaml``."""
    return config.model_dump(mode="json")


def dump_yaml(values: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(values), sort_keys=False, allow_unicode=True, width=100)


def spec_dict(spec: Any) -> dict[str, Any]:
    """A frozen dataclass spec (DataSpec, ModelSpec) as a JSON-able dict."""
    to_dict = getattr(spec, "to_dict", None)
    return to_dict() if callable(to_dict) else dataclasses.asdict(spec)
