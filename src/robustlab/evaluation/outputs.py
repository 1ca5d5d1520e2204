"""Write a robustness evaluation to a results directory: JSON, CSV, example figures, adversarials.

The layout is the one ``robustlab.reporting.results`` reads back (``curves.json``,
``records.csv`` + ``records_summary.json``, ``examples.json`` + ``examples/*.png``,
``adversarials/``), so ``build_report`` can redraw everything without the model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.evaluation.adversarials import save_adversarials
from robustlab.evaluation.records import records_summary, sample_records, write_records_csv
from robustlab.evaluation.robustness import CurvesResult
from robustlab.io import write_json
from robustlab.reporting import plots
from robustlab.reporting.results import (
    CURVES_FILE,
    EXAMPLES_FILE,
    EXAMPLES_FORMAT,
    RECORDS_FILE,
    RECORDS_SUMMARY_FILE,
)

log = logging.getLogger(__name__)


def choose_examples(
    kept: Sequence[int],
    y: torch.Tensor,
    clean_pred: torch.Tensor,
    adv_pred: torch.Tensor,
    count: int,
) -> list[int]:
    """Up to ``count`` kept indices, preferring images the attack turned from right to wrong."""
    flipped = [i for i in kept if clean_pred[i] == y[i] and adv_pred[i] != y[i]]
    others = [i for i in kept if i not in set(flipped)]
    return (flipped + others)[:count]


def write_examples(
    out_dir: str | os.PathLike[str],
    result: CurvesResult,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_logits: torch.Tensor,
    classes: Sequence[str],
    *,
    count: int = 4,
    eps_index: int = -1,
    show_filter: bool = False,
) -> list[dict[str, Any]]:
    """Triptych and prediction-vector figures for up to ``count`` white-box examples.

    Uses the perturbed images ``result.outcomes`` kept; ``eps_index`` picks the epsilon shown
    (default the largest). ``show_filter`` adds the perturbation as a diverging heat map (for
    targeted optimisation attacks, whose perturbation is a learned filter).
    """
    out_dir = Path(out_dir)
    white = result.outcomes[result.curve("white-box")["label"]]
    eps = result.epsilons[eps_index]
    clean_probs = clean_logits.float().softmax(dim=1)
    clean_conf, clean_pred = clean_probs.max(dim=1)
    chosen = choose_examples(sorted(white.examples), y, clean_pred, white.pred[eps_index], count)
    figures = []
    for i in chosen:
        adversarial = white.examples[i][eps_index]
        probs = white.example_probs[i][eps_index]
        true, before, after = (
            classes[int(y[i])],
            classes[int(clean_pred[i])],
            classes[int(probs.argmax())],
        )
        stem = f"examples/{i:05d}"
        plots.plot_triptych(
            x[i].numpy(),
            adversarial.numpy(),
            out_dir / f"{stem}_triptych.png",
            true_label=true,
            clean_pred=before,
            clean_conf=float(clean_conf[i]),
            adv_pred=after,
            adv_conf=float(probs.max()),
            eps=eps,
        )
        figures.append(
            {
                "path": f"{stem}_triptych.png",
                "index": i,
                "eps": eps,
                "caption": f"image {i}: {true} → {after} at ε = {plots.format_eps(eps)}",
            }
        )
        plots.plot_prediction_vectors(
            clean_probs[i].tolist(),
            probs.tolist(),
            classes,
            out_dir / f"{stem}_vector.png",
            title=f"image {i}: prediction vector before and after",
        )
        figures.append(
            {
                "path": f"{stem}_vector.png",
                "index": i,
                "eps": eps,
                "caption": f"image {i}: softmax before (blue) and after (green) the attack",
            }
        )
        if show_filter:
            plots.plot_filter(
                (adversarial - x[i]).numpy(),
                out_dir / f"{stem}_filter.png",
                title=f"image {i}: learned filter (Δ pixel)",
            )
            figures.append(
                {
                    "path": f"{stem}_filter.png",
                    "index": i,
                    "eps": eps,
                    "caption": f"image {i}: the learned filter, red brighter / blue darker",
                }
            )
    write_json(
        out_dir / EXAMPLES_FILE,
        {"format": EXAMPLES_FORMAT, "format_version": 1, "figures": figures},
    )
    return figures


def write_robustness_outputs(
    out_dir: str | os.PathLike[str],
    result: CurvesResult,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_logits: torch.Tensor,
    classes: Sequence[str],
    *,
    indices: torch.Tensor | None = None,
    examples: int = 4,
    save: int = 64,
    save_eps_index: int = -1,
    show_filter: bool = False,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Write curves.json, per-sample records, example figures and saved adversarials.

    ``x``/``y``: the evaluated images ``(N, C, H, W)`` and labels ``(N,)``; ``clean_logits``:
    the target's ``(N, K)`` clean logits; ``indices``: positions of the images in their split.
    ``save`` adversarials (white-box, at ``epsilons[save_eps_index]``) are written as float
    tensors and PNGs, limited to the images ``result`` kept. Returns the records summary.
    """
    out_dir = Path(out_dir)
    write_json(out_dir / CURVES_FILE, result.to_dict())
    white = result.outcomes[result.curve("white-box")["label"]]
    rows = sample_records(white, clean_logits, y, classes, indices)
    write_records_csv(out_dir / RECORDS_FILE, rows)
    summary = records_summary(rows)
    write_json(
        out_dir / RECORDS_SUMMARY_FILE,
        {
            "format": "robustlab-records-summary",
            "format_version": 1,
            "curve": result.curve("white-box")["label"],
            **summary,
        },
    )
    if examples > 0 and white.examples:
        write_examples(
            out_dir,
            result,
            x,
            y,
            clean_logits,
            classes,
            count=examples,
            eps_index=save_eps_index,
            show_filter=show_filter,
        )
    kept = sorted(white.examples)[:save]
    if kept:
        chosen = torch.tensor(kept)
        x_adv = torch.stack([white.examples[i][save_eps_index] for i in kept])
        save_adversarials(
            out_dir / "adversarials",
            model,
            x[chosen],
            x_adv,
            y[chosen],
            classes,
            indices=chosen if indices is None else indices[chosen],
            eps=result.epsilons[save_eps_index],
            batch_size=batch_size,
        )
    log.debug("wrote robustness results to %s", out_dir)
    return summary
