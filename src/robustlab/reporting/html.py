"""A self-contained HTML report (jinja2) built from sections of text, tables, figures and flags.

``render_report(out_dir, ReportSpec(...))`` is generic: evaluation, the studies runner or a user
script describe what to show as ``Section`` objects and get one ``report.html``. Figures are PNG
files; by default they are embedded as base64 so the page is a single file that can be mailed
or archived. Flags (dicts with ``severity``, ``code``, ``message``) are collected from every
section and shown first.
"""

from __future__ import annotations

import base64
import datetime
import importlib.metadata
import importlib.resources
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from robustlab.errors import UserError
from robustlab.io import write_text

log = logging.getLogger(__name__)

SEVERITIES = ("error", "warning", "info")
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_RESERVED_IDS = {"flags"}


@dataclass
class Table:
    """A table: ``rows`` are lists of cells (numbers are formatted to 4 significant digits)."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    """A PNG, by path (absolute, or relative to the report's directory)."""

    path: str | os.PathLike[str]
    caption: str = ""


@dataclass
class Section:
    """One block of the report; ``id`` becomes the HTML anchor (letters, digits, '-' and '_')."""

    id: str
    title: str
    text: str = ""  # plain text; blank lines separate paragraphs
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    flags: list[Mapping[str, Any]] = field(default_factory=list)


@dataclass
class ReportSpec:
    """The whole report: a title, sections in order, and flags not tied to any section."""

    title: str
    sections: list[Section] = field(default_factory=list)
    subtitle: str = ""
    flags: list[Mapping[str, Any]] = field(default_factory=list)


def format_cell(value: Any) -> str:
    """Numbers to 4 significant digits, None/NaN to a dash, lists joined by commas."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(format_cell(item) for item in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={format_cell(item)}" for key, item in value.items())
    return str(value)


def settings_table(settings: Mapping[str, Any], caption: str = "Settings") -> Table:
    """A two-column name/value table, nested mappings flattened to dotted names."""

    def flatten(prefix: str, value: Any) -> list[list[Any]]:
        if isinstance(value, Mapping) and value:
            return [
                row
                for key, item in value.items()
                for row in flatten(f"{prefix}.{key}" if prefix else str(key), item)
            ]
        return [[prefix, value]]

    return Table(columns=["setting", "value"], rows=flatten("", settings), caption=caption)


def _version() -> str:
    try:
        return importlib.metadata.version("robustlab")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _template() -> jinja2.Template:
    source = (
        importlib.resources.files("robustlab.reporting")
        .joinpath("templates", "report.html.j2")
        .read_text(encoding="utf-8")
    )
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(source)


def _check_flag(flag: Mapping[str, Any], where: str) -> dict[str, Any]:
    severity = flag.get("severity")
    if severity not in SEVERITIES:
        raise UserError(f"{where}: flag severity must be one of {SEVERITIES}, got {severity!r}")
    details = flag.get("details")
    remedy = details.get("remedy") if isinstance(details, Mapping) else None
    return {
        "severity": severity,
        "code": flag.get("code", ""),
        "message": flag.get("message", ""),
        "remedy": remedy if isinstance(remedy, str) else None,
    }


def _image_src(path: Path, out_dir: Path, embed: bool) -> str | None:
    if not path.is_file():
        log.warning("report figure not found: %s", path)
        return None
    if embed:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return Path(os.path.relpath(path, out_dir)).as_posix()


def _prepare(spec: ReportSpec, out_dir: Path, embed: bool) -> dict[str, Any]:
    """Validate the spec and turn it into the plain values the template shows."""
    seen: set[str] = set()
    sections = []
    all_flags = [_check_flag(flag, "report") for flag in spec.flags]
    for section in spec.sections:
        if not _ID.match(section.id) or section.id in _RESERVED_IDS:
            raise UserError(
                f"report section id {section.id!r} must be a word like 'robustness-fgsm'"
            )
        if section.id in seen:
            raise UserError(f"report section id {section.id!r} is used twice")
        seen.add(section.id)
        flags = [_check_flag(flag, f"section {section.id!r}") for flag in section.flags]
        all_flags += [
            {**flag, "section": section.id, "section_title": section.title} for flag in flags
        ]
        figures = []
        for figure in section.figures:
            path = Path(figure.path)
            path = path if path.is_absolute() else out_dir / path
            figures.append(
                {
                    "path": str(figure.path),
                    "caption": figure.caption,
                    "src": _image_src(path, out_dir, embed),
                }
            )
        tables = []
        for table in section.tables:
            width = len(table.columns)
            if any(len(row) != width for row in table.rows):
                raise UserError(
                    f"section {section.id!r}: table '{table.caption}' has rows of the wrong length"
                )
            rows = [[format_cell(cell) for cell in row] for row in table.rows]
            tables.append({"caption": table.caption, "columns": table.columns, "rows": rows})
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", section.text) if p.strip()]
        sections.append(
            {
                "id": section.id,
                "title": section.title,
                "paragraphs": paragraphs,
                "tables": tables,
                "figures": figures,
                "flags": flags,
            }
        )
    order = {severity: rank for rank, severity in enumerate(SEVERITIES)}
    all_flags.sort(key=lambda flag: order[flag["severity"]])
    for flag in all_flags:
        flag.setdefault("section", None)
        flag.setdefault("section_title", None)
    return {
        "spec": {"title": spec.title, "subtitle": spec.subtitle, "sections": sections},
        "flags": all_flags,
    }


def render_report(
    out_dir: str | os.PathLike[str],
    spec: ReportSpec,
    *,
    embed_images: bool = True,
    filename: str = "report.html",
) -> Path:
    """Write ``out_dir/filename`` (atomically) and return its path.

    Relative figure paths are resolved against ``out_dir``. With ``embed_images`` the PNGs are
    inlined (base64) so the HTML file alone shows everything; otherwise it links to them by
    relative path. A missing figure is shown as a visible note and logged, not fatal.
    """
    out_dir = Path(out_dir)
    context = _prepare(spec, out_dir, embed_images)
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    html = _template().render(**context, version=_version(), generated=generated)
    path = write_text(out_dir / filename, html)
    log.debug("wrote report %s", path)
    return path
