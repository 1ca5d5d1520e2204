"""The tcmalloc restart: taken once when the library is installed, skipped when asked or done."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from robustlab import allocator

SCRIPT = (
    "import os, sys; from robustlab.allocator import reexec_with_tcmalloc, allocator_name;"
    "reexec_with_tcmalloc(['-c', sys.argv[1], sys.argv[1]]); print(allocator_name(),"
    " os.environ.get('TCMALLOC_RELEASE_RATE'))"
)


def run(env: dict[str, str]) -> str:
    unset = ("LD_PRELOAD", "ROBUSTLAB_TCMALLOC", "TCMALLOC_RELEASE_RATE")
    base = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, SCRIPT],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=600,  # a hang guard only: a loaded machine may start Python slowly
    )
    return done.stdout.strip()


@pytest.mark.skipif(allocator.tcmalloc_library() is None, reason="tcmalloc is not installed")
def test_restarts_once_under_tcmalloc() -> None:
    # free pages go back to the system at tcmalloc's fastest gradual rate, unless one is set
    assert run({}) == f"tcmalloc {allocator.RELEASE_RATE}"
    assert run({"TCMALLOC_RELEASE_RATE": "2"}) == "tcmalloc 2"


def test_opt_out_keeps_glibc_malloc() -> None:
    assert run({"ROBUSTLAB_TCMALLOC": "0"}) == "glibc malloc None"


def test_no_restart_when_already_preloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/somewhere/libtcmalloc_minimal.so.4")
    monkeypatch.setattr(os, "execve", lambda *args: pytest.fail("restarted again"))
    allocator.reexec_with_tcmalloc(["-c", "pass"])
    assert allocator.allocator_name() == "tcmalloc"
