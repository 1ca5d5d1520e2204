"""Figures and the HTML report, built from result files (JSON, PNG) only, never from models."""

from robustlab.reporting.html import (
    Figure,
    ReportSpec,
    Section,
    Table,
    render_report,
    settings_table,
)
from robustlab.reporting.plots import (
    format_eps,
    plot_confusion,
    plot_curves,
    plot_filter,
    plot_prediction_vectors,
    plot_transfer_heatmap,
    plot_triptych,
)
from robustlab.reporting.results import build_report, build_report_spec

__all__ = [
    "Figure",
    "ReportSpec",
    "Section",
    "Table",
    "build_report",
    "build_report_spec",
    "format_eps",
    "plot_confusion",
    "plot_curves",
    "plot_filter",
    "plot_prediction_vectors",
    "plot_transfer_heatmap",
    "plot_triptych",
    "render_report",
    "settings_table",
]
