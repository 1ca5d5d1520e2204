"""Rebuild ``report.html`` for a run or results directory from its JSON (and PNG) files alone.

The file layout written by ``robustlab evaluate`` (and read here) is::

    RUN_DIR/config.json                  the run (model, data, training) - optional
    RUN_DIR/metrics.json                 clean accuracy per split            (robustlab-metrics)
    <dir>/curves.json                    robustness curves + sanity flags    (robustlab-curves)
    <dir>/records.csv, records_summary.json   per-sample records and their aggregate
    <dir>/examples.json                  example figures (triptychs, prediction vectors, filters)
    <dir>/adversarials/adversarials.json saved adversarials and the PNG re-check
    <dir>/transfer.json                  transfer matrix                     (robustlab-transfer)

Any number of these may sit anywhere below the directory given. Curves, heat maps and confusion
matrices are redrawn from the JSON; example PNGs are used as they are. No model is loaded.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustlab.errors import UserError
from robustlab.io import read_json
from robustlab.reporting import html
from robustlab.reporting.grade import grade_section
from robustlab.reporting.plots import plot_confusion, plot_curves, plot_transfer_heatmap
from robustlab.schemas import (
    AdversarialsFile,
    CurvesFile,
    ExamplesFile,
    MetricsFile,
    RecordsSummaryFile,
    RunConfigFile,
    Schema,
    TransferFile,
    inside,
    read_record,
    validate_record,
)

log = logging.getLogger(__name__)

RUN_FORMAT = "robustlab-run"
METRICS_FORMAT = "robustlab-metrics"
CURVES_FORMAT = "robustlab-curves"
TRANSFER_FORMAT = "robustlab-transfer"
EXAMPLES_FORMAT = "robustlab-examples"

METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.json"
CURVES_FIGURE = "curves.png"
TRANSFER_FILE = "transfer.json"
TRANSFER_FIGURE = "transfer.png"
RECORDS_FILE = "records.csv"
RECORDS_SUMMARY_FILE = "records_summary.json"
EXAMPLES_FILE = "examples.json"
ADVERSARIALS_FILE = "adversarials/adversarials.json"
REPORT_FILE = "report.html"


SCHEMAS: dict[str, type[Schema]] = {
    RUN_FORMAT: RunConfigFile,
    METRICS_FORMAT: MetricsFile,
    CURVES_FORMAT: CurvesFile,
    TRANSFER_FORMAT: TransferFile,
    EXAMPLES_FORMAT: ExamplesFile,
}


def _read(path: Path, fmt: str) -> dict[str, Any] | None:
    """A result file of format ``fmt``, validated field by field; None for other JSON."""
    data = read_json(path, what="result file")
    if not isinstance(data, dict) or data.get("format") != fmt:
        log.info("skipping %s: not a %s file", path, fmt)
        return None
    return validate_record(data, SCHEMAS[fmt], str(path))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower() or "x"


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _eps_label(eps: float) -> str:
    return f"{eps:.4g} ({eps * 255:.3g}/255)"


def run_section(config: Mapping[str, Any]) -> html.Section:
    """The trained run: model and data specs and the training metrics."""
    tables = [html.settings_table(config.get("model", {}), "Model")]
    tables.append(html.settings_table(config.get("data", {}), "Data"))
    if config.get("metrics"):
        tables.append(html.settings_table(config["metrics"], "Training result"))
    if config.get("defence"):
        tables.append(html.settings_table(config["defence"], "Defence"))
    classes = ", ".join(map(str, config.get("classes", [])))
    return html.Section(id="run", title="Run", text=f"Classes: {classes}", tables=tables)


def metrics_section(
    data: Mapping[str, Any], directory: Path, root: Path, section_id: str
) -> html.Section:
    """Clean accuracy per split and per class, and the confusion matrix of each split."""
    splits = data.get("splits", {})
    rows = [[name, s["n"], s["accuracy"]] for name, s in splits.items()]
    tables = [html.Table(["split", "images", "accuracy"], rows, "Clean accuracy")]
    figures = []
    for name, split in splits.items():
        tables.append(
            html.Table(
                ["class", "images", "correct", "accuracy"],
                [[c["class"], c["n"], c["correct"], c["accuracy"]] for c in split["per_class"]],
                f"Per-class accuracy ({name})",
            )
        )
        path = plot_confusion(
            split["confusion"], split["classes"], directory / "figures" / f"confusion_{name}.png"
        )
        figures.append(
            html.Figure(
                _relative(path, root), f"Confusion matrix ({name}): rows true, columns predicted"
            )
        )
    tables.append(html.settings_table(data.get("settings", {})))
    model = data.get("model", {}).get("arch", "model")
    return html.Section(
        id=section_id,
        title=f"Clean accuracy ({model})",
        tables=tables,
        figures=figures,
        text=f"Run: {data.get('run_dir', directory)}",
    )


def _curves_tables(data: Mapping[str, Any]) -> list[html.Table]:
    models = [
        [name, info.get("role", ""), info.get("clean_accuracy")]
        for name, info in data["models"].items()
    ]
    tables = [html.Table(["model", "role", "clean accuracy"], models, "Models")]
    columns = ["ε", "ε (/255)", *[c["label"] for c in data["curves"]]]
    rows = [
        [eps, eps * 255, *[c["accuracy"][i] for c in data["curves"]]]
        for i, eps in enumerate(data["epsilons"])
    ]
    tables.append(html.Table(columns, rows, "Accuracy vs ε"))
    checks = [
        ["accuracy at ε = 0 (should equal clean)", data.get("eps0_accuracy")],
        ["clean accuracy", data.get("clean_accuracy")],
        ["accuracy under PGD with ε = 1 (should be ~0)", data.get("unbounded_accuracy")],
    ]
    tables.append(html.Table(["check", "value"], checks, "Sanity measurements"))
    return tables


def _records_table(summary: Mapping[str, Any]) -> html.Table:
    rows = [
        [
            _eps_label(p["eps"]),
            p["n"],
            p["accuracy"],
            p["success_rate"],
            p["mean_adv_conf"],
            p["median_l2"],
            p["max_linf"],
        ]
        for p in summary["per_eps"]
    ]
    found = summary["min_eps"]
    caption = (
        f"White-box per-sample records (minimal ε found for {found['found']} images, "
        f"median {found['median'] if found['median'] is None else _eps_label(found['median'])})"
    )
    columns = ["ε", "images", "accuracy", "success rate", "mean adv. confidence",
               "median ‖δ‖₂", "max ‖δ‖∞"]  # fmt: skip
    return html.Table(columns, rows, caption)


def _adversarials_table(data: Mapping[str, Any]) -> html.Table:
    rows = [
        [
            data["n"],
            data["adversarial_float"],
            data["adversarial_png"],
            data["lost_by_quantisation"],
        ]
    ]
    eps = data.get("eps")
    caption = "Saved adversarials" + ("" if eps is None else f" at ε = {_eps_label(eps)}")
    return html.Table(
        ["saved", "adversarial (float)", "adversarial after 8-bit PNG", "undone by PNG"],
        rows,
        caption,
    )


def curves_section(
    data: Mapping[str, Any], directory: Path, root: Path, section_id: str
) -> html.Section:
    """Robustness curves with their flags, records, saved adversarials and examples."""
    figure = plot_curves(data, directory / CURVES_FIGURE)
    figures = [
        html.Figure(_relative(figure, root), "Accuracy vs ε (fraction of the pixel range and /255)")
    ]
    tables = _curves_tables(data)
    if (directory / RECORDS_SUMMARY_FILE).is_file():
        tables.append(
            _records_table(read_record(directory / RECORDS_SUMMARY_FILE, RecordsSummaryFile))
        )
    if (directory / ADVERSARIALS_FILE).is_file():
        tables.append(
            _adversarials_table(read_record(directory / ADVERSARIALS_FILE, AdversarialsFile))
        )
    examples = (
        _read(directory / EXAMPLES_FILE, EXAMPLES_FORMAT)
        if (directory / EXAMPLES_FILE).is_file()
        else None
    )
    for example in (examples or {}).get("figures", []):
        figure_path = inside(directory / example["path"], root, str(directory / EXAMPLES_FILE))
        figures.append(html.Figure(_relative(figure_path, root), example.get("caption", "")))
    tables.append(html.settings_table({"attack": data["attack"], **data.get("settings", {})}))
    attack = data["attack"].get("name", "attack")
    text = (
        f"Target {data['target']}, {data['n']} images, attack {attack} "
        f"({data['attack'].get('norm', '?')}). Accuracy counts every image, so clean mistakes are errors. "
        f"Results in {_relative(directory, root) if directory != root else '.'}."
    )
    return html.Section(
        id=section_id,
        title=f"Robustness: {attack} on {data['target']}",
        text=text,
        tables=tables,
        figures=figures,
        flags=data.get("flags", []),
    )


def transfer_section(
    data: Mapping[str, Any], directory: Path, root: Path, section_id: str
) -> html.Section:
    """The N x N transfer matrix as a table and a heat map."""
    figure = plot_transfer_heatmap(data, directory / TRANSFER_FIGURE)
    names = data["models"]
    rows = [[f"from {source}", *data["accuracy"][i]] for i, source in enumerate(names)]
    rows.append(["clean", *[data["clean_accuracy"][name] for name in names]])
    table = html.Table(
        ["surrogate \\ target", *names], rows, f"Accuracy at ε = {_eps_label(data['eps'])}"
    )
    return html.Section(
        id=section_id,
        title=f"Transfer matrix: {data['attack'].get('name', 'attack')}",
        text="Rows: the model the adversarials were crafted on; columns: the model scored. "
        "The diagonal is the white-box attack.",
        tables=[table, html.settings_table({"attack": data["attack"], **data.get("settings", {})})],
        figures=[html.Figure(_relative(figure, root), "Transfer heat map")],
        flags=data.get("flags", []),
    )


def build_report_spec(path: str | os.PathLike[str]) -> html.ReportSpec:
    """Collect every result file under ``path`` into a ``ReportSpec`` (figures are redrawn)."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"not a directory: {root}")
    sections: list[html.Section] = []
    used: set[str] = set()

    def unique(base: str) -> str:
        name, k = _slug(base), 2
        while name in used:
            name, k = f"{_slug(base)}-{k}", k + 1
        used.add(name)
        return name

    def found(name: str) -> list[Path]:
        """Result files below root, none reached through a link that leaves it."""
        top = root.resolve()
        return [f for f in sorted(root.rglob(name)) if f.resolve().is_relative_to(top)]

    for file in found(METRICS_FILE):
        if (data := _read(file, METRICS_FORMAT)) is not None:
            sections.append(metrics_section(data, file.parent, root, unique("clean-accuracy")))
    graded: list[tuple[str, dict[str, Any]]] = []
    for file in found(CURVES_FILE):
        if (data := _read(file, CURVES_FORMAT)) is not None:
            graded.append((f"{data['attack'].get('name')} on {data['target']}", data))
            sections.append(
                curves_section(
                    data, file.parent, root, unique(f"robustness-{data['attack'].get('name')}")
                )
            )
    for file in found(TRANSFER_FILE):
        if (data := _read(file, TRANSFER_FORMAT)) is not None:
            sections.append(transfer_section(data, file.parent, root, unique("transfer")))
    if not sections:
        raise UserError(
            f"no results found under {root} (metrics.json, curves.json or transfer.json); "
            "run 'robustlab evaluate' first"
        )
    config_file = root / "config.json"
    if config_file.is_file() and (config := _read(config_file, RUN_FORMAT)) is not None:
        sections.insert(0, run_section(config))
    if (grade := grade_section(graded)) is not None:  # first: how far to trust what follows
        sections.insert(0, grade)
    return html.ReportSpec(
        title=f"robustlab report: {root.resolve().name}",
        subtitle=str(root.resolve()),
        sections=sections,
    )


def build_report(path: str | os.PathLike[str], *, embed_images: bool = True) -> Path:
    """Rebuild ``path/report.html`` from the result files below ``path``; returns its path."""
    return html.render_report(
        path, build_report_spec(path), embed_images=embed_images, filename=REPORT_FILE
    )
