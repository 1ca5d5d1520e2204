"""Helpers for the hardening tests: run the real CLI, check the one-line error contract.

Subprocess runs cost a Python start plus a torch import each, so the tests use them where the
process boundary is the point (exit codes, SIGKILL, torchrun) and call ``robustlab.cli.main``
in-process for the many input checks (the same code path minus the interpreter start).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from robustlab.cli import main

REPO = Path(__file__).resolve().parents[2]
# digits is bundled with scikit-learn: no data directory needed. 12 px: small-cnn's minimum
# is 10, and an epoch on ~1,250 images takes about a second.
DIGITS = ("--data", "digits", "--image-size", "12")
SMALL_CNN = ("--model", "small-cnn", "--strategy", "scratch", "--optimizer", "adam", "--lr", "3e-3")
TIMING_KEYS = {"seconds", "seconds_per_image", "elapsed", "started", "finished", "timings", "eta"}


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a ``python -m robustlab`` child: this one, threads pinned.

    The child uses as many threads as this process, so its floating-point results match an
    in-process run of the same command bit for bit.
    """
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str], cwd: Path, *, timeout: float = 1200, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m robustlab ARGS`` in ``cwd``; returns the finished process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "robustlab", *map(str, args)],
        cwd=cwd,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cli(args: Sequence[str], cwd: Path, **env: str) -> subprocess.Popen[bytes]:
    """``python -m robustlab ARGS`` in the background (to be killed)."""
    return subprocess.Popen(
        [sys.executable, "-m", "robustlab", *map(str, args)],
        cwd=cwd,
        env=cli_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_when(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    timeout: float = 1200,
    sig: signal.Signals = signal.SIGKILL,
) -> bool:
    """Send ``sig`` to ``process`` once ``ready()`` holds; True if it ended by it, False if the
    command finished (exit 0) first - on a loaded machine that is a valid outcome too.

    Fails only if the command fails on its own or ``ready`` never holds within ``timeout``
    (a hang guard, not a timing assumption).
    """
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail("timed out waiting for the first unit of work")
        time.sleep(0.02)
    if process.poll() is None:
        process.send_signal(sig)
    process.wait()
    err = process.stderr.read().decode() if process.stderr else ""
    if process.stderr:
        process.stderr.close()
    ended_by_signal = process.returncode in (-sig, 128 + sig)  # 128 + n: handled, then exited
    assert process.returncode == 0 or ended_by_signal, f"exit {process.returncode}:\n{err}"
    return ended_by_signal


def call_cli(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``robustlab ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """The user-error contract: exit 2, exactly one stderr line, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("robustlab: error: "), lines[0]
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder`` (empty when it does not exist)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def without_timing(value: Any) -> Any:
    """``value`` (parsed JSON) with timing fields removed, recursively, for comparisons."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid run directory (untrained small-cnn on digits at 12 px): attacks need one."""
    from robustlab.data import DataSpec
    from robustlab.models import ModelSpec, create_model, save_checkpoint

    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create_model(ModelSpec(arch="small-cnn", num_classes=10, in_chans=1, input_size=12))
    data = DataSpec(name="digits", image_size=12)
    config = {"classes": [str(i) for i in range(10)], "data": dataclasses.asdict(data)}
    save_checkpoint(folder, model, config)
    return folder


@pytest.fixture(autouse=True)
def _quiet_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process CLI calls must not believe they run under torchrun."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ROBUSTLAB_DIST_ERROR_DIR"):
        monkeypatch.delenv(name, raising=False)
