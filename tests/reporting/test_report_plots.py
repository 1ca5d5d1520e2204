from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustlab.reporting import plots


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def _not_blank(path: Path) -> None:
    pixels = _pixels(path)
    assert pixels.std() > 5, f"{path.name} looks blank"


def test_curves_figure_has_one_line_per_curve_and_a_255_axis(curves_data) -> None:
    figure = plots.curves_figure(curves_data)
    ax = figure.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    for curve in curves_data["curves"]:
        assert curve["label"] in labels
    assert any(label.startswith("clean") for label in labels)
    assert ax.get_xlabel().startswith("ε")
    tops = [axis.get_xlabel() for axis in figure.axes[1:]] + [
        child.get_xlabel() for child in ax.get_children() if hasattr(child, "get_xlabel")
    ]
    assert "ε (/255)" in tops
    assert list(ax.get_xticks()) == pytest.approx(curves_data["epsilons"])


def test_curves_plot_writes_a_png(tmp_path: Path, curves_data) -> None:
    path = plots.plot_curves(curves_data, tmp_path / "curves.png")
    _not_blank(path)
    pixels = _pixels(path)
    coloured = (np.abs(pixels[..., 0] - pixels[..., 2]) > 60).sum()  # attack curves in colour
    assert coloured > 100


def test_curves_plot_tolerates_missing_values(tmp_path: Path, curves_data) -> None:
    data = curves_data
    data["curves"][1]["accuracy"][2] = None  # null in JSON, e.g. a NaN written by write_json
    _not_blank(plots.plot_curves(data, tmp_path / "curves.png"))


def test_transfer_heatmap_and_confusion(tmp_path: Path, transfer_data) -> None:
    _not_blank(plots.plot_transfer_heatmap(transfer_data, tmp_path / "transfer.png"))
    _not_blank(plots.plot_confusion([[5, 1], [0, 7]], ["a", "b"], tmp_path / "confusion.png"))


def test_triptych_and_prediction_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((3, 24, 24), dtype=np.float32)
    x_adv = np.clip(x + 0.03 * np.sign(rng.standard_normal(x.shape)), 0, 1)
    path = plots.plot_triptych(
        x, x_adv, tmp_path / "t.png", true_label="healthy", clean_pred="healthy",
        clean_conf=0.97, adv_pred="unhealthy", adv_conf=0.81, eps=0.03,
    )  # fmt: skip
    _not_blank(path)
    grey = rng.random((1, 24, 24), dtype=np.float32)
    plots.plot_triptych(
        grey, grey, tmp_path / "g.png", true_label="0", clean_pred="0", clean_conf=1.0,
        adv_pred="0", adv_conf=1.0,
    )  # fmt: skip
    _not_blank(
        plots.plot_prediction_vectors([0.9, 0.1], [0.2, 0.8], ["a", "b"], tmp_path / "v.png")
    )


def test_filter_heatmap_is_diverging_and_centred_at_zero(tmp_path: Path) -> None:
    delta = np.zeros((1, 40, 40), dtype=np.float32)
    delta[0, :, :20] = 0.2  # brighter on the left
    delta[0, :, 20:] = -0.05  # slightly darker on the right: same colour scale, paler blue
    pixels = _pixels(plots.plot_filter(delta, tmp_path / "f.png"))
    red = (pixels[..., 0] > pixels[..., 2] + 80).sum()
    blue = (pixels[..., 2] > pixels[..., 0] + 20).sum()
    assert red > 200 and blue > 200


def test_plots_reject_wrong_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        plots.plot_filter(np.zeros((4, 4)), tmp_path / "f.png")


def test_format_eps_shows_both_units() -> None:
    assert plots.format_eps(8 / 255) == "0.03137 (8/255)"


def test_lines_figure_draws_every_line_gaps_references_and_a_right_axis(tmp_path: Path) -> None:
    lines = [
        plots.Line([0.9, None, 0.5], "A", x=[1, 2, 3], style={"marker": "o"}),
        plots.Line([0.7], "base"),  # a reference: horizontal
        plots.Line([3.0, 2.0, 1.0], "size", x=[1, 2, 3], right=True),
    ]
    figure = plots.lines_figure(lines, title="t", xlabel="n", right_label="size", xticks=[1, 2, 3])
    left, right = figure.axes
    assert [line.get_label() for line in left.get_lines()] == ["A", "base"]
    assert np.isnan(left.get_lines()[0].get_ydata()[1])  # None is a gap, not a zero
    assert list(left.get_lines()[1].get_ydata()) == [0.7, 0.7]
    assert [line.get_label() for line in right.get_lines()] == ["size"]
    assert right.get_ylabel() == "size" and left.get_ylim() == (-0.02, 1.02)
    legend = [text.get_text() for text in left.get_legend().get_texts()]
    assert legend == ["A", "base", "size"]  # one legend for both axes
    _not_blank(plots.plot_lines(lines, tmp_path / "lines.png", title="t", xlabel="n"))


def test_plot_images_shows_grey_and_colour_images_side_by_side(tmp_path: Path) -> None:
    grey = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    colour = np.stack([grey[0], 1 - grey[0], grey[0] * 0])
    _not_blank(plots.plot_images([grey, colour], ["grey", "colour"], tmp_path / "row.png"))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        plots.plot_images([grey[0]], ["flat"], tmp_path / "bad.png")
