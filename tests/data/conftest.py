"""Data-layer tests never touch the network; download tests inject their own opener."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTLAB_OFFLINE", "1")
