"""Open the rebuilt report in headless Chromium: it must render (non-blank) with its sections."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustlab.reporting import build_report

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    pytest.skip(f"headless Chromium not found (looked for {', '.join(CHROMIUM_NAMES)} on PATH)")


@pytest.mark.browser
def test_report_renders_in_headless_chromium(results_dir: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    report = build_report(results_dir)
    url = report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    common = [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1280,2000", url],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.var() > 100, "screenshot is blank"
    # The dark header band is drawn (the stylesheet applied, not a bare page).
    assert (pixels[:40].mean(axis=(0, 1)) < 100).all()

    dom = subprocess.run(
        [*common, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=600
    ).stdout
    for anchor in ("flags", "clean-accuracy", "robustness-fgsm", "transfer"):
        assert f'id="{anchor}"' in dom
    assert dom.count("<img") == 4 and "curve-rises" in dom
