"""The spec contract: one typed, frozen definition per concept (data, model, training, ...).

A spec is a pydantic dataclass (``extra='forbid'``, frozen) that owns its fields' types,
literal choices, defaults, ranges and descriptions. Everything else is derived from it:
study config blocks (``studies.config``), the CLI's argument groups (``cli.spec_args``) and
their help texts. Pydantic *dataclasses* (not ``BaseModel``) because specs are built
positionally (``DataSpec("digits")``) and ``dataclasses.replace`` / ``asdict`` work on them.

Constructing a spec with a bad value raises ONE ``UserError`` line naming the field
(``data.limit must be >= 1, got 0``), never a pydantic ``ValidationError``.
"""

from __future__ import annotations

import functools
import operator
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar

import pydantic.dataclasses
from pydantic import ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from robustlab.errors import UserError, suggestion

T = TypeVar("T")

SPEC_CONFIG = ConfigDict(extra="forbid")
NONE_WORDS = ("none", "null")  # how a command line or --set writes "unset"

# Whole-number fields, declared once: strict (True or 2.5 is refused, not coerced), with their
# lower bound. ``size: Count = Field(default=96, description=...)``; ``Count | None`` for unset.
Count = Annotated[int, Field(ge=1, strict=True)]  # 1, 2, ...
Natural = Annotated[int, Field(ge=0, strict=True)]  # 0, 1, ...


@typing.dataclass_transform(frozen_default=True, field_specifiers=(pydantic.Field,))
def spec(section: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: a frozen pydantic dataclass whose errors are one ``UserError`` line.

    ``section`` prefixes field names in messages (``data`` -> ``data.limit``).
    """

    def make(cls: type[T]) -> type[T]:
        built = pydantic.dataclasses.dataclass(frozen=True, config=SPEC_CONFIG)(cls)
        validate = built.__init__

        @functools.wraps(validate)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                validate(self, *args, **kwargs)
            except ValidationError as error:
                raise UserError(describe_problem(error, section, built)) from None

        built.__init__ = __init__  # type: ignore[method-assign]
        return built

    return make


def spec_fields(cls: type) -> dict[str, FieldInfo]:
    """A spec's fields in order: name -> pydantic ``FieldInfo`` (type, default, range, help)."""
    return dict(cls.__pydantic_fields__)  # type: ignore[attr-defined]


def default_of(info: FieldInfo) -> Any:
    """The field's default (``...`` when it has none)."""
    return info.get_default(call_default_factory=True) if not info.is_required() else ...


# -------------------------------------------------------------------------------- messages

_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}
_KINDS = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "too_short": "longer",
    "too_long": "shorter",
}


def describe_problem(error: ValidationError, section: str, cls: type | None = None) -> str:
    """The first problem of ``error`` as one line naming the field, plus a count of the rest."""
    problems = error.errors(include_url=False)
    first = problems[0]
    loc = [part for part in first["loc"] if not str(part).startswith(("function-", "tuple["))]
    kind = first["type"]
    path = section + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
    known = list(spec_fields(cls)) if cls is not None else []
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        key = str(loc[-1])
        message = f"unknown {section} spec field '{key}'{suggestion(key, known)}"
    elif kind in ("missing_argument", "missing"):
        message = f"{section} spec lacks field '{loc[-1]}'"
    else:
        message = phrase_problem(first, path)
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return message


def phrase_problem(problem: Mapping[str, Any], path: str) -> str:
    """One pydantic problem (not an unknown or missing key) as ``PATH must be ..., got X``."""
    kind, got = problem["type"], problem.get("input")
    cause = problem.get("ctx", {}).get("error")
    if isinstance(cause, UserError):
        return str(cause)  # a spec's own check: its message already names the field
    shown = "" if isinstance(got, dict | list) else f", got {got!r}"
    if kind in _BOUNDS:
        sign, bound = _BOUNDS[kind]
        return f"{path} must be {sign} {problem['ctx'][bound]}{shown}"
    if kind == "literal_error":
        expected = problem["ctx"]["expected"]
        close = suggestion(str(got), re.findall(r"'([^']*)'", expected))
        return f"{path} must be one of {expected}{shown}{close}"
    if kind in _KINDS:
        return f"{path} must be {_KINDS[kind]}{shown}"
    text = problem["msg"].removeprefix("Value error, ")
    return f"{path}: {text[:1].lower() + text[1:]}{shown}"


# ------------------------------------------------------------------------------ converter

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def read_number(text: str) -> float | None:
    """``'1e-3'`` -> 0.001, ``'8/255'`` -> 0.0314; None when ``text`` is not a number."""
    if _NUMBER.match(text.strip()):
        return float(text)
    fraction = _FRACTION.match(text)
    if fraction and float(fraction.group(2)) != 0:
        return float(fraction.group(1)) / float(fraction.group(2))
    return None


def unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (annotation, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        # ``Count | None``: the constraints stay with the field; the converter needs the type
        args = [_bare(a) for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) < len(typing.get_args(annotation)):
            return functools.reduce(operator.or_, args), True
    return annotation, False


def _bare(annotation: Any) -> Any:
    """``Annotated[int, ...]`` -> ``int``; any other annotation as it is."""
    is_annotated = typing.get_origin(annotation) is Annotated
    return typing.get_args(annotation)[0] if is_annotated else annotation


def choices_of(annotation: Any) -> tuple[Any, ...] | None:
    """The literal choices of a field (``Literal['a', 'b']`` or ``Literal[...] | None``)."""
    inner, _ = unwrap_optional(annotation)
    return typing.get_args(inner) if typing.get_origin(inner) is Literal else None


def from_text(text: str, annotation: Any) -> Any:
    """A command-line string as a value of ``annotation`` (the one converter of the CLI).

    ``none``/``null`` -> None where allowed; numbers (``1e-3``, ``8/255``) for numeric fields;
    comma-separated items for tuple fields (``0.7,0.15,0.15``, ``crop,flip``). The spec then
    validates the value (ranges, choices), so this only shapes it.
    """
    inner, optional = unwrap_optional(annotation)
    if optional and text.strip().lower() in NONE_WORDS:
        return None
    origin = typing.get_origin(inner)
    words = [a for a in typing.get_args(inner) if typing.get_origin(a) is Literal]
    if origin in (typing.Union, types.UnionType) and words:  # e.g. fractions or 'official'
        if any(text in typing.get_args(word) for word in words):
            return text
        inner = next(a for a in typing.get_args(inner) if a not in words)
        origin = typing.get_origin(inner)
    if origin is tuple:
        return _items(text, typing.get_args(inner))
    if origin is Literal:
        literal_types = {type(choice) for choice in typing.get_args(inner)}
        return _scalar(text, next(iter(literal_types)) if len(literal_types) == 1 else str)
    return _scalar(text, inner)


def _items(text: str, item_types: tuple[Any, ...]) -> tuple[Any, ...]:
    """``'0.7,0.15,0.15'`` for ``tuple[float, float, float]``; ``'a,b'`` for ``tuple[str, ...]``."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    variable = len(item_types) == 2 and item_types[1] is Ellipsis
    if item_types and not variable and len(parts) != len(item_types):
        kind = "numbers" if item_types[0] in (int, float) else "values"
        raise UserError(f"needs {len(item_types)} {kind}, got {len(parts)} in '{text}'")
    item_type = item_types[0] if item_types else str
    return tuple(from_text(part, item_type) for part in parts)


def _scalar(text: str, kind: Any) -> Any:
    mixed = set(typing.get_args(kind)) == {str, int}  # names or indices: digits are indices
    if kind is int or (mixed and text.strip().isdigit()):
        try:
            return int(text)
        except ValueError:
            raise UserError(f"must be a whole number, got '{text}'") from None
    if kind is float:
        number = read_number(text)
        if number is None:
            raise UserError(f"must be a number (e.g. 0.5, 1e-3 or 8/255), got '{text}'")
        return number
    return text


def spec_values(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are fields of spec ``cls``."""
    fields = spec_fields(cls)
    return {name: value for name, value in values.items() if name in fields}
