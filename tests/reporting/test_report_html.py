from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustlab.errors import UserError
from robustlab.reporting import Figure, ReportSpec, Section, Table, build_report, render_report


def _png(path: Path) -> Path:
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(path)
    return path


def test_render_report_shows_sections_tables_figures_and_flags_first(tmp_path: Path) -> None:
    _png(tmp_path / "fig.png")
    spec = ReportSpec(
        title="Study <1>",
        sections=[
            Section(id="intro", title="Intro", text="first paragraph\n\nsecond <b>paragraph</b>"),
            Section(
                id="results",
                title="Results",
                tables=[Table(["eps", "accuracy"], [[0.01, 0.912345], [0.02, None]], "Curve")],
                figures=[Figure("fig.png", "a figure")],
                flags=[{"severity": "warning", "code": "curve-rises", "message": "it rises"}],
            ),
        ],
        flags=[{"severity": "error", "code": "zero-gradients", "message": "grads are zero"}],
    )
    html = render_report(tmp_path, spec).read_text()
    for anchor in ("flags", "intro", "results"):
        assert f'id="{anchor}"' in html
    # Flags (errors first) come before every section.
    assert html.index("zero-gradients") < html.index("curve-rises") < html.index('id="intro"')
    assert html.count("<p>") >= 2 and "second &lt;b&gt;paragraph&lt;/b&gt;" in html
    assert "Study &lt;1&gt;" in html  # everything is escaped
    assert "0.9123" in html and "—" in html  # 4 significant digits, None as a dash
    assert re.search(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', html)  # self-contained


def test_render_report_can_link_images_instead(tmp_path: Path) -> None:
    (tmp_path / "figs").mkdir()
    _png(tmp_path / "figs" / "a.png")
    spec = ReportSpec("t", [Section("s", "S", figures=[Figure(tmp_path / "figs" / "a.png")])])
    html = render_report(tmp_path, spec, embed_images=False).read_text()
    assert 'src="figs/a.png"' in html


def test_missing_figure_is_shown_not_fatal(tmp_path: Path) -> None:
    spec = ReportSpec("t", [Section("s", "S", figures=[Figure("nope.png")])])
    assert "missing figure: nope.png" in render_report(tmp_path, spec).read_text()


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ([Section("a", "A"), Section("a", "B")], "used twice"),
        ([Section("bad id", "A")], "section id"),
        ([Section("flags", "A")], "section id"),
        ([Section("a", "A", flags=[{"severity": "fatal", "message": "x"}])], "severity"),
        ([Section("a", "A", tables=[Table(["x", "y"], [[1]])])], "wrong length"),
    ],
)
def test_bad_specs_are_user_errors(tmp_path: Path, sections: list[Section], message: str) -> None:
    with pytest.raises(UserError, match=message):
        render_report(tmp_path, ReportSpec("t", sections))
    assert not (tmp_path / "report.html").exists()


def test_build_report_from_result_files_alone(results_dir: Path) -> None:
    html = build_report(results_dir).read_text()
    for anchor in ("flags", "clean-accuracy", "robustness-fgsm", "transfer"):
        assert f'id="{anchor}"' in html
    # Figures are redrawn from JSON beside their result files.
    assert (results_dir / "robustness" / "fgsm" / "curves.png").is_file()
    assert (results_dir / "transfer" / "transfer.png").is_file()
    assert (results_dir / "figures" / "confusion_test.png").is_file()
    assert "curve-rises" in html and "image 3" in html
    assert html.count("data:image/png;base64") == 4  # confusion, curves, example, heat map
    assert "missing figure" not in html


def test_report_without_results_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"format": "robustlab-run"}')  # trained, never evaluated
    with pytest.raises(UserError, match="no results found"):
        build_report(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        build_report(tmp_path / "missing")


def test_corrupt_result_file_is_a_user_error(results_dir: Path) -> None:
    (results_dir / "robustness" / "fgsm" / "curves.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        build_report(results_dir)
