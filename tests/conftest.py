"""Shared test fixtures.

The real data sets are found through the project's own data-directory setting: tests point
``ROBUSTLAB_DATA_DIR`` at ``../shared/data`` beside the checkout unless it is already set.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# A loaded CI machine must not fail a property test for being slow: no per-example deadline,
# no "too slow" health check (the inputs, not the speed, are under test).
settings.register_profile("robustlab", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("robustlab")

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROBUSTLAB_DATA_DIR", str(REPO.parent / "shared" / "data"))
SHARED_DATA = Path(os.environ["ROBUSTLAB_DATA_DIR"])


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory holding the real data sets; tests needing it skip with a reason if absent."""
    if not (SHARED_DATA / "plantvillage_tomato_96px.npz").exists():
        pytest.skip(f"real data sets not found in {SHARED_DATA} (set ROBUSTLAB_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)
