"""The report's first section: how far each robust accuracy in it can be trusted.

Built from the ``evaluation`` entries of the result files (``robustlab.evaluation.grade``);
results written before that entry existed are listed as "not graded".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from robustlab.reporting.html import Section, Table

GRADE_SECTION_ID = "evaluation-grade"


def _budget(member: Mapping[str, Any]) -> str:
    keys = ("steps", "restarts", "top_k", "queries", "eot_samples", "iterations")
    parts = [f"{key} {member[key]}" for key in keys if member.get(key) is not None]
    return f"{member.get('name', '?')} ({', '.join(parts)})" if parts else str(member.get("name"))


def grade_section(results: Sequence[tuple[str, Mapping[str, Any]]]) -> Section | None:
    """One row per result ``(label, result JSON)``; per-member accounting for cascades."""
    if not results:
        return None
    rows, tables, lines = [], [], []
    for label, data in results:
        evaluation = data.get("evaluation")
        if not isinstance(evaluation, Mapping):
            rows.append([label, "not graded", "no", "", "written before evaluation grades"])
            continue
        members = "; ".join(_budget(member) for member in evaluation.get("attacks", []))
        standard = "yes" if evaluation.get("standard_autoattack") else "no"
        rows.append(
            [label, evaluation.get("grade"), standard, members, evaluation.get("statement")]
        )
        lines.append(f"{label}: {evaluation.get('statement')}")
        stages = evaluation.get("robust_after") or []
        epsilons = data.get("epsilons") or []
        if stages and epsilons:
            columns = [
                "robust after",
                *[f"ε = {eps:.4g} ({eps * 255:.3g}/255)" for eps in epsilons],
            ]
            stage_rows = [[f"{stage['attack']}", *stage["robust_accuracy"]] for stage in stages]
            tables.append(Table(columns, stage_rows, f"{label}: robust accuracy after each attack"))
    columns = ["result", "grade", "standard AutoAttack", "attacks (budget)", "what it means"]
    summary = Table(columns, rows, "Evaluation grade")
    return Section(
        id=GRADE_SECTION_ID,
        title="Evaluation grade",
        text="\n\n".join(lines) or "No result in this report carries an evaluation grade.",
        tables=[summary, *tables],
    )
