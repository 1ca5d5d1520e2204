"""Per-sample records of an attack (CSV) and their aggregate (JSON).

One row per (image, epsilon): true label, clean prediction and confidence, adversarial
prediction and confidence, the minimal epsilon at which the image was found adversarial, and
the size of the perturbation ``||x_adv - x||_2`` and ``||x_adv - x||_inf`` in [0, 1] pixel units.
Confidences are the softmax probability of the predicted class.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robustlab.evaluation.robustness import Outcome
from robustlab.io import write_text

RECORD_FIELDS = (
    "index", "label", "true_class", "eps", "eps_255",
    "clean_pred", "clean_class", "clean_conf", "adv_pred", "adv_class", "adv_conf",
    "clean_correct", "adv_correct", "attack_success", "min_eps", "min_eps_255", "l2", "linf",
)  # fmt: skip


def min_eps_from_grid(
    outcome: Outcome, y: torch.Tensor, clean_correct: torch.Tensor | None = None
) -> torch.Tensor:
    """``(N,)`` smallest swept epsilon at which the image is misclassified (inf: never).

    0 where ``clean_correct`` says the clean image is already wrong, as minimum-norm attacks
    report it, so ``robustlab.attacks.accuracy_from_min_eps`` turns either into a curve. An
    upper bound at the sweep's resolution; minimum-norm attacks give a finer
    ``outcome.min_eps``, which ``sample_records`` prefers.
    """
    wrong = ~outcome.correct(y)  # (E, N)
    # float64 so that the values are exactly the swept epsilons (JSON, comparisons)
    eps = torch.tensor(outcome.epsilons, dtype=torch.float64).unsqueeze(1).expand_as(wrong)
    found = torch.where(wrong, eps, torch.full_like(eps, math.inf)).amin(dim=0)
    return found if clean_correct is None else torch.where(clean_correct, found, 0.0)


@dataclass(frozen=True)
class EvaluatedImages:
    """The images an evaluation ran on, and what the target model made of them clean."""

    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64 true labels
    clean_logits: torch.Tensor  # (N, K) the target model's logits on x
    classes: Sequence[str]  # class names, index = label
    indices: torch.Tensor | None = None  # (N,) positions in their split; None: 0..N-1

    def clean_probs(self) -> torch.Tensor:
        """``(N, K)`` the target's softmax on the clean images."""
        return self.clean_logits.float().softmax(dim=1)


def sample_records(outcome: Outcome, images: EvaluatedImages) -> list[dict[str, Any]]:
    """Rows (dicts with ``RECORD_FIELDS``) for every image and epsilon of ``outcome``."""
    y, classes = images.y, images.classes
    clean_conf, clean_pred = images.clean_probs().max(dim=1)
    min_eps = outcome.min_eps
    if min_eps is None:
        min_eps = min_eps_from_grid(outcome, y, clean_pred == y)
    indices = torch.arange(len(y)) if images.indices is None else images.indices
    rows = []
    for e, eps in enumerate(outcome.epsilons):
        for k in range(len(y)):
            label, before, after = int(y[k]), int(clean_pred[k]), int(outcome.pred[e, k])
            found = 0.0 if before != label else float(min_eps[k])  # wrong already at eps = 0
            rows.append(
                {
                    "index": int(indices[k]),
                    "label": label,
                    "true_class": classes[label],
                    "eps": eps,
                    "eps_255": eps * 255,
                    "clean_pred": before,
                    "clean_class": classes[before],
                    "clean_conf": float(clean_conf[k]),
                    "adv_pred": after,
                    "adv_class": classes[after],
                    "adv_conf": float(outcome.conf[e, k]),
                    "clean_correct": before == label,
                    "adv_correct": after == label,
                    "attack_success": before == label and after != label,
                    "min_eps": found,
                    "min_eps_255": found * 255,
                    "l2": float(outcome.l2[e, k]),
                    "linf": float(outcome.linf[e, k]),
                }
            )
    return rows


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def records_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate rows per epsilon (JSON-able).

    ``per_eps``: list of ``{"eps", "eps_255", "n", "accuracy", "success_rate" (misclassified
    among clean-correct images), "mean_adv_conf", "mean_l2", "max_linf", "median_l2"}``;
    ``min_eps``: ``{"found", "not_found", "median", "mean"}`` over clean-correct images.
    """
    by_eps: dict[float, list[dict[str, Any]]] = {}
    for row in records:
        by_eps.setdefault(row["eps"], []).append(row)
    per_eps = []
    for eps, rows in sorted(by_eps.items()):
        attacked = [r for r in rows if r["clean_correct"]]
        per_eps.append(
            {
                "eps": eps,
                "eps_255": eps * 255,
                "n": len(rows),
                "accuracy": _mean([float(r["adv_correct"]) for r in rows]),
                "success_rate": _mean([float(r["attack_success"]) for r in attacked]),
                "mean_adv_conf": _mean([r["adv_conf"] for r in rows]),
                "mean_l2": _mean([r["l2"] for r in rows]),
                "median_l2": _median([r["l2"] for r in rows]),
                "max_linf": max((r["linf"] for r in rows), default=None),
            }
        )
    first = sorted(by_eps)[0] if by_eps else None
    found = [
        r["min_eps"]
        for r in by_eps.get(first, [])
        if r["clean_correct"] and math.isfinite(r["min_eps"])
    ]
    attacked = [r for r in by_eps.get(first, []) if r["clean_correct"]]
    return {
        "n_images": len(by_eps.get(first, [])),
        "per_eps": per_eps,
        "min_eps": {
            "found": len(found),
            "not_found": len(attacked) - len(found),
            "median": _median(found),
            "mean": _mean(found),
        },
    }


def write_records_csv(path: str | os.PathLike[str], records: Sequence[dict[str, Any]]) -> Path:
    """Write the rows as CSV (header = ``RECORD_FIELDS``), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in records:
        writer.writerow(
            {
                key: (f"{value:.6g}" if isinstance(value, float) else value)
                for key, value in row.items()
            }
        )
    return write_text(path, buffer.getvalue())
