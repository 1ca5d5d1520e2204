"""Matplotlib figures (PNG) drawn from JSON-able results or plain arrays, never from models.

Every function builds its own ``matplotlib.figure.Figure`` (no pyplot global state, so it works
headless and in threads with the Agg canvas) and writes the PNG atomically through
``robustlab.io``. Images are arrays shaped ``(C, H, W)`` with values in ``[0, 1]``, the
project's pixel convention; epsilons are in ``[0, 1]`` pixel units.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from robustlab.io import atomic_path

log = logging.getLogger(__name__)

# One look per curve kind, after the leaf study's figure: noise dashed black, attacks in colour.
_KIND_STYLE = {
    "white-box": {"linestyle": ":", "marker": "x", "linewidth": 2.0},
    "black-box": {"linestyle": "-", "marker": "o", "linewidth": 1.6},
    "noise": {"linestyle": "--", "marker": "s", "linewidth": 1.4, "color": "k"},
}
DPI = 100


def format_eps(eps: float) -> str:
    """``0.0314 (8/255)``: an epsilon as a fraction and in /255 units."""
    return f"{eps:.4g} ({eps * 255:.3g}/255)"


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    FigureCanvasAgg(fig)  # attach the Agg canvas; Figure() alone has none
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    log.debug("wrote %s", path)
    return Path(path)


def _as_image(image: Any) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3) float array for ``imshow``."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"expected an image shaped (C, H, W), got {array.shape}")
    array = np.clip(array, 0.0, 1.0)
    return array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)


def curves_figure(result: Mapping[str, Any]) -> Figure:
    """Accuracy vs epsilon, one line per curve of a ``CurvesResult.to_dict()``.

    The bottom axis shows epsilon as a fraction of the pixel range, the top axis the same
    values in /255 units; the clean accuracy is a grey horizontal line.
    """
    epsilons = [float(e) for e in result["epsilons"]]
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.add_subplot()
    for curve in result["curves"]:
        style = _KIND_STYLE.get(curve["kind"], {})
        accuracy = [math.nan if a is None else a for a in curve["accuracy"]]
        ax.plot(epsilons, accuracy, label=curve["label"], **style)
    clean = result.get("clean_accuracy")
    if clean is not None:
        ax.axhline(clean, color="0.6", linewidth=1, label=f"clean ({clean:.1%})")
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_xlabel("ε (fraction of pixel range)")
    if epsilons:
        ax.set_xticks(epsilons)
        ax.set_xticklabels([f"{e:.3g}" for e in epsilons], rotation=45 if len(epsilons) > 6 else 0)
        top = ax.secondary_xaxis("top", functions=(lambda e: e * 255, lambda v: v / 255))
        top.set_xticks([e * 255 for e in epsilons])
        top.set_xticklabels([f"{e * 255:.3g}" for e in epsilons])
        top.set_xlabel("ε (/255)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=9)
    attack = result.get("attack", {}).get("name", "attack")
    ax.set_title(f"{result.get('target', 'target')}: accuracy under {attack}", fontsize=11)
    return fig


def plot_curves(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``curves_figure(result)`` as a PNG."""
    return _save(curves_figure(result), path)


def _heatmap(
    ax: Any,
    values: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    fmt: str,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
) -> Any:
    image = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    if values.size <= 400:  # annotate cells while the text still fits
        for (i, j), value in np.ndenumerate(values):
            if not math.isnan(value):
                red, green, blue, _ = image.cmap(image.norm(value))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # perceived luminance
                colour = "white" if dark else "black"
                ax.text(j, i, format(value, fmt), ha="center", va="center", color=colour)
    return image


def plot_transfer_heatmap(matrix: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Heat map of a ``TransferMatrix.to_dict()``: rows surrogate, columns target, diagonal white-box."""
    names = list(matrix["models"])
    values = np.array(
        [[math.nan if v is None else v for v in row] for row in matrix["accuracy"]], dtype=float
    )
    size = max(4.0, 1.1 * len(names) + 2.5)
    fig = Figure(figsize=(size, size * 0.85))
    ax = fig.add_subplot()
    image = _heatmap(ax, values, names, names, fmt=".2f", vmin=0.0, vmax=1.0)
    ax.set_xlabel("target (scored)")
    ax.set_ylabel("surrogate (crafts the adversarials)")
    attack = matrix.get("attack", {}).get("name", "attack")
    ax.set_title(f"accuracy under {attack}, ε = {format_eps(float(matrix['eps']))}", fontsize=11)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="accuracy")
    return _save(fig, path)


def plot_confusion(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike[str]
) -> Path:
    """Confusion matrix (rows true class, columns predicted) as counts with a heat map."""
    values = np.asarray(confusion, dtype=float)
    size = max(3.5, 0.6 * len(classes) + 2.5)
    fig = Figure(figsize=(size, size * 0.85))
    ax = fig.add_subplot()
    image = _heatmap(ax, values, classes, classes, fmt=".0f", cmap="Blues")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="images")
    return _save(fig, path)


def plot_triptych(
    original: Any,
    adversarial: Any,
    path: str | os.PathLike[str],
    *,
    true_label: str,
    clean_pred: str,
    clean_conf: float,
    adv_pred: str,
    adv_conf: float,
    eps: float | None = None,
) -> Path:
    """Original | amplified perturbation | adversarial, titled with labels and confidences.

    The perturbation ``adversarial - original`` is scaled so that its largest absolute value
    maps to the ends of the grey range (0.5 = no change), else it would be invisible.
    """
    x = np.asarray(original, dtype=np.float32)
    x_adv = np.asarray(adversarial, dtype=np.float32)
    delta = x_adv - x
    peak = float(np.abs(delta).max())
    amplified = 0.5 + 0.5 * delta / peak if peak > 0 else np.full_like(delta, 0.5)
    fig = Figure(figsize=(8.4, 3.3))
    axes = fig.subplots(1, 3)
    cmap = "gray" if x.shape[0] == 1 else None
    panels = [
        (x, f"original: true {true_label}\npredicted {clean_pred} ({clean_conf:.1%})"),
        (amplified, f"perturbation ×{0.5 / peak:.3g}" if peak > 0 else "perturbation (none)"),
        (
            x_adv,
            f"adversarial{'' if eps is None else f', ε={format_eps(eps)}'}\n"
            f"predicted {adv_pred} ({adv_conf:.1%})",
        ),
    ]
    for ax, (image, title) in zip(axes, panels, strict=True):
        ax.imshow(_as_image(image), cmap=cmap, vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def plot_prediction_vectors(
    clean_probs: Sequence[float],
    adv_probs: Sequence[float],
    classes: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> Path:
    """The softmax vector before and after the attack, as in the leaf study's line plot."""
    positions = np.arange(len(classes))
    fig = Figure(figsize=(max(4.2, 0.45 * len(classes) + 2.6), 3.1))
    ax = fig.add_subplot()
    ax.plot(positions, clean_probs, "b-o", label="original")
    ax.plot(positions, adv_probs, "g-x", label="adversarial")
    ax.set_xticks(positions, labels=list(classes), rotation=45 if len(classes) > 4 else 0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_attacked_image(
    image: Any,
    adversarial: Any,
    probabilities: tuple[Any, Any],
    classes: Sequence[str],
    true_class: int,
    *,
    stem: str | os.PathLike[str],
    eps: float,
    title: str,
) -> tuple[Path, Path]:
    """One attacked image's two figures: ``<stem>_triptych.png`` and ``<stem>_vector.png``.

    ``image``, ``adversarial``: ``(C, H, W)`` in [0, 1]; ``probabilities``: the softmax ``(K,)``
    before and after the attack (the predictions and confidences in the titles come from them).
    """
    before, after = (np.asarray(p) for p in probabilities)
    triptych = plot_triptych(
        np.asarray(image),
        np.asarray(adversarial),
        f"{os.fspath(stem)}_triptych.png",
        true_label=classes[true_class],
        clean_pred=classes[int(before.argmax())],
        clean_conf=float(before.max()),
        adv_pred=classes[int(after.argmax())],
        adv_conf=float(after.max()),
        eps=eps,
    )
    vector = plot_prediction_vectors(
        before.tolist(), after.tolist(), classes, f"{os.fspath(stem)}_vector.png", title=title
    )
    return triptych, vector


def plot_filter(delta: Any, path: str | os.PathLike[str], *, title: str = "learned filter") -> Path:
    """A learned additive filter ``(C, H, W)`` as a heat map per channel, diverging around 0.

    Colours are centred at 0 (white) with one symmetric scale across channels, so red and
    blue mean "brighter" and "darker" by the same amount everywhere.
    """
    values = np.asarray(delta, dtype=np.float32)
    if values.ndim != 3:
        raise ValueError(f"expected a filter shaped (C, H, W), got {values.shape}")
    peak = float(np.abs(values).max()) or 1e-12
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-peak, vmax=peak)
    channels = values.shape[0]
    fig = Figure(figsize=(3.6 * channels + 0.8, 3.6))
    axes = np.atleast_1d(fig.subplots(1, channels))
    names = ["R", "G", "B"] if channels == 3 else [str(c) for c in range(channels)]
    image = None
    for ax, plane, name in zip(axes, values, names, strict=True):
        image = ax.imshow(plane, cmap="RdBu_r", norm=norm)
        ax.set_xticks([])
        ax.set_yticks([])
        if channels > 1:
            ax.set_title(f"channel {name}", fontsize=9)
    fig.colorbar(image, ax=list(axes), fraction=0.046, pad=0.04, label="Δ pixel")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


@dataclass(frozen=True)
class Line:
    """One line of a ``plot_lines`` chart: y against x, ``None`` values left as gaps.

    ``x`` None draws a horizontal line at ``y[0]`` (a reference such as a baseline's accuracy).
    """

    y: Sequence[float | None]
    label: str
    x: Sequence[float] | None = None
    style: Mapping[str, Any] = field(default_factory=dict)  # matplotlib keywords: color, marker...
    right: bool = False  # drawn against the right-hand axis (``right_label``)


def lines_figure(
    lines: Sequence[Line],
    *,
    title: str,
    xlabel: str,
    ylabel: str = "accuracy",
    right_label: str | None = None,
    xticks: Sequence[float] | None = None,
) -> Figure:
    """A line chart of accuracies (left axis, 0..1) and, optionally, another quantity (right)."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    other = ax.twinx() if right_label else None
    for line in lines:
        axis = other if line.right and other is not None else ax
        values = [math.nan if v is None else v for v in line.y]
        if line.x is None:
            axis.axhline(values[0], linewidth=1, label=line.label, **line.style)
        else:
            axis.plot(line.x, values, label=line.label, **line.style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    if other is not None:
        other.set_ylabel(right_label)
    if xticks is not None:
        ax.set_xticks(list(xticks))
    ax.grid(alpha=0.3)
    handles = [
        h for axis in (ax, other) if axis is not None for h in axis.get_legend_handles_labels()[0]
    ]
    ax.legend(handles=handles, frameon=False, fontsize=8, ncol=2 if len(handles) > 6 else 1)
    ax.set_title(title, fontsize=11)
    return fig


def plot_lines(lines: Sequence[Line], path: str | os.PathLike[str], **labels: Any) -> Path:
    """Write ``lines_figure(lines, **labels)`` (title, xlabel, ...) as a PNG."""
    return _save(lines_figure(lines, **labels), path)


def plot_images(images: Sequence[Any], titles: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """Images ``(C, H, W)`` in [0, 1] side by side, each titled; grey when single-channel."""
    fig = Figure(figsize=(3.2 * len(images), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(images)))
    for ax, image, title in zip(axes, images, titles, strict=True):
        grey = np.asarray(image).shape[0] == 1
        ax.imshow(_as_image(image), cmap="gray" if grey else None, vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)
