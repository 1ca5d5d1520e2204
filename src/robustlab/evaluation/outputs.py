"""Write a robustness evaluation to a results directory: JSON, CSV, example figures, adversarials.

The layout is the one ``robustlab.reporting.results`` reads back (``curves.json``,
``records.csv`` + ``records_summary.json``, ``examples.json`` + ``examples/*.png``,
``adversarials/``), so ``build_report`` can redraw everything without the model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab.evaluation.adversarials import AdversarialSet, save_adversarials
from robustlab.evaluation.records import (
    EvaluatedImages,
    records_summary,
    sample_records,
    write_records_csv,
)
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


@dataclass(frozen=True)
class OutputRequest:
    """What ``write_robustness_outputs`` writes beside ``curves.json`` and the records.

    ``examples``: example figures (white-box); ``adversarials``: white-box adversarials saved
    as float tensors and PNGs, limited to the images the result kept; both at
    ``epsilons[eps_index]``. ``show_filter`` adds the perturbation as a diverging heat map (for
    targeted optimisation attacks, whose perturbation is a learned filter).
    """

    examples: int = 4
    adversarials: int = 64
    eps_index: int = -1
    show_filter: bool = False
    batch_size: int = 128


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
    images: EvaluatedImages,
    request: OutputRequest,
) -> list[dict[str, Any]]:
    """Triptych and prediction-vector figures for up to ``request.examples`` white-box examples.

    Uses the perturbed images ``result.outcomes`` kept, at ``epsilons[request.eps_index]``.
    """
    out_dir = Path(out_dir)
    white = result.outcomes[result.curve("white-box")["label"]]
    clean_pred = images.clean_probs().max(dim=1).indices
    adv_pred = white.pred[request.eps_index]
    chosen = choose_examples(
        sorted(white.examples), images.y, clean_pred, adv_pred, request.examples
    )
    figures = []
    for i in chosen:
        figures += _example_figures(out_dir, result, images, i, request)
    write_json(
        out_dir / EXAMPLES_FILE,
        {"format": EXAMPLES_FORMAT, "format_version": 1, "figures": figures},
    )
    return figures


def _example_figures(
    out_dir: Path, result: CurvesResult, images: EvaluatedImages, i: int, request: OutputRequest
) -> list[dict[str, Any]]:
    """The figures of image ``i``: triptych, prediction vectors and, if asked, the filter."""
    white = result.outcomes[result.curve("white-box")["label"]]
    eps = result.epsilons[request.eps_index]
    adversarial = white.examples[i][request.eps_index]
    probs = white.example_probs[i][request.eps_index]
    classes = images.classes
    true, after = classes[int(images.y[i])], classes[int(probs.argmax())]
    stem = f"examples/{i:05d}"
    plots.plot_attacked_image(
        images.x[i],
        adversarial,
        (images.clean_probs()[i], probs),
        classes,
        int(images.y[i]),
        stem=out_dir / stem,
        eps=eps,
        title=f"image {i}: prediction vector before and after",
    )
    figures = [
        (f"{stem}_triptych.png", f"image {i}: {true} → {after} at ε = {plots.format_eps(eps)}"),
        (f"{stem}_vector.png", f"image {i}: softmax before (blue) and after (green) the attack"),
    ]
    if request.show_filter:
        plots.plot_filter(
            (adversarial - images.x[i]).numpy(),
            out_dir / f"{stem}_filter.png",
            title=f"image {i}: learned filter (Δ pixel)",
        )
        figures.append(
            (f"{stem}_filter.png", f"image {i}: the learned filter, red brighter / blue darker")
        )
    return [{"path": path, "index": i, "eps": eps, "caption": text} for path, text in figures]


def write_robustness_outputs(
    out_dir: str | os.PathLike[str],
    result: CurvesResult,
    target_model: nn.Module,
    images: EvaluatedImages,
    request: OutputRequest | None = None,
) -> dict[str, Any]:
    """Write curves.json, per-sample records, example figures and saved adversarials.

    ``images``: the evaluated images, their labels, the target's clean logits and class
    names. Returns the records summary.
    """
    request = OutputRequest() if request is None else request
    out_dir = Path(out_dir)
    write_json(out_dir / CURVES_FILE, result.to_dict())
    label = result.curve("white-box")["label"]
    white = result.outcomes[label]
    rows = sample_records(white, images)
    write_records_csv(out_dir / RECORDS_FILE, rows)
    summary = records_summary(rows)
    write_json(
        out_dir / RECORDS_SUMMARY_FILE,
        {"format": "robustlab-records-summary", "format_version": 1, "curve": label, **summary},
    )
    if request.examples > 0 and white.examples:
        write_examples(out_dir, result, images, request)
    kept = sorted(white.examples)[: request.adversarials]
    if kept:
        chosen = torch.tensor(kept)
        adversarials = AdversarialSet(
            x=images.x[chosen],
            x_adv=torch.stack([white.examples[i][request.eps_index] for i in kept]),
            y=images.y[chosen],
            classes=images.classes,
            indices=chosen if images.indices is None else images.indices[chosen],
            eps=result.epsilons[request.eps_index],
        )
        save_adversarials(out_dir / "adversarials", target_model, adversarials, request.batch_size)
    log.debug("wrote robustness results to %s", out_dir)
    return summary
