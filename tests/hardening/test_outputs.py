"""Every output path: one line and exit 2 when it cannot be written, checked before any work.

Output folders that cannot exist or take a file - an existing file where a folder is needed,
a path below a file, ``/proc``, ``/dev/null/x``, an immutable folder (``chattr +i``; root
ignores permission bits, so that is how the tests make a folder nobody may write) - must be
refused by every command before data is loaded: the commands below name a data set that does
not exist, so an error about the data would mean the output was checked too late. Files get the
permissions the user's umask gives.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DIGITS, SMALL_CNN, assert_one_line_error, call_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustlab.errors import UserError
from robustlab.io import atomic_path, remove_stale_temporaries, write_text
from robustlab.outdir import check_writable, claim

NO_DATA = ("--data", "/nonexistent/robustlab-data")  # loading it would fail: proves order


def train_args(out: Path) -> list:
    return ["train", *NO_DATA, *SMALL_CNN, "--epochs", "1", "--out", out]


def attack_args(run: Path, out: Path) -> list:
    return ["attack", run, "--attack", "fgsm", "--eps", "0.1", "--out", out]


def evaluate_args(run: Path, out: Path) -> list:
    return ["evaluate", run, "--attack", "fgsm", "--eps", "0.1", "--out", out]


def study_args(tmp: Path, out: Path) -> list:
    return ["run", "leaf", "--set", "data.name=/nonexistent/robustlab-data", "--out", out]


COMMANDS = {
    "train": lambda run, tmp, out: train_args(out),
    "attack": lambda run, tmp, out: attack_args(run, out),
    "evaluate": lambda run, tmp, out: evaluate_args(run, out),
    "run": lambda run, tmp, out: study_args(tmp, out),
}


@contextlib.contextmanager
def immutable(folder: Path) -> Iterator[Path]:
    """``folder`` made immutable (no new entries, even for root); skip where chattr cannot."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not available")
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make an immutable folder here: {made.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


def blocked_outputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Output paths that cannot be written, and a word the error must contain."""
    blocker = tmp / "a-file"
    blocker.write_text("not a folder")
    return {
        "existing file": (blocker, "not a folder"),
        "below a file": (blocker / "sub" / "out", "not a folder"),
        "/proc": (Path("/proc/robustlab-out"), "not writable"),
        "/dev/null/x": (Path("/dev/null/x"), "not a folder"),
    }


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", ["existing file", "below a file", "/proc", "/dev/null/x"])
def test_unwritable_output_is_one_line_before_any_work(
    command, case, untrained_run, tmp_path, capsys
):
    out, needle = blocked_outputs(tmp_path)[case]
    code, _, err = call_cli(COMMANDS[command](untrained_run, tmp_path, out), capsys)
    line = assert_one_line_error(code, err, needle, str(out))
    assert "nonexistent" not in line  # refused before the data was looked at
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing made


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_immutable_output_folder_is_one_line_before_any_work(
    command, untrained_run, tmp_path, capsys
):
    with immutable(tmp_path / "locked") as folder:
        for out in (folder, folder / "new" / "deeper"):
            code, _, err = call_cli(COMMANDS[command](untrained_run, tmp_path, out), capsys)
            line = assert_one_line_error(code, err, "not writable", str(out))
            assert "nonexistent" not in line
        assert list(folder.iterdir()) == []


def test_clean_evaluation_of_an_immutable_run_is_one_line(untrained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(untrained_run, run)
    with immutable(run):
        code, _, err = call_cli(["evaluate", run], capsys)
        assert_one_line_error(code, err, "RUN_DIR", "not writable")


PART = st.text(alphabet="abcxyz-_.0123456789", min_size=1, max_size=8).filter(
    lambda part: part not in {".", ".."}
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    parts=st.lists(PART, min_size=0, max_size=4),
    base=st.sampled_from(["file", "/proc", "/dev/null"]),
)
def test_any_folder_below_an_unwritable_place_is_refused(tmp_path, parts, base):
    root = {"file": tmp_path / "a-file", "/proc": Path("/proc"), "/dev/null": Path("/dev/null")}[
        base
    ]
    (tmp_path / "a-file").write_text("x")
    out = root.joinpath(*parts)
    with pytest.raises(UserError) as error:
        check_writable(out)
    assert str(out) in str(error.value) and "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing made


@pytest.mark.parametrize("name", ["a" * 300, "ok/" + "b" * 300 + "/c"])
def test_too_long_a_name_is_one_line_and_makes_nothing(tmp_path, name):
    with pytest.raises(UserError, match="cannot be made: File name too long"):
        claim(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_broken_symbolic_link_is_named(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match="broken symbolic link"):
        check_writable(tmp_path / "link" / "out")


@pytest.mark.parametrize("where", ["below a file", "/proc", "/dev/null/x"])
def test_atomic_path_turns_an_unmakeable_parent_into_one_error(tmp_path, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = {
        "below a file": blocker / "sub" / "out.json",
        "/proc": Path("/proc/robustlab-out/out.json"),
        "/dev/null/x": Path("/dev/null/x/out.json"),
    }[where]
    with pytest.raises(UserError, match="could not write"):
        write_text(target, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_atomic_path_in_an_immutable_folder_is_one_error(tmp_path):
    with (
        immutable(tmp_path / "locked") as folder,
        pytest.raises(UserError, match="could not write"),
    ):
        write_text(folder / "out.json", "x")


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(mask=st.integers(min_value=0, max_value=0o777))
def test_written_files_get_the_permissions_of_the_umask(tmp_path, mask):
    target = tmp_path / "out.txt"
    with umask(mask):
        write_text(target, "x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_a_whole_run_is_readable_by_others_under_umask_022(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *DIGITS, *SMALL_CNN, "--epochs", "1", "--limit", "120", "--out", out]
    with umask(0o022):
        code, _, err = call_cli(args, capsys)
    assert code == 0, err
    files = [p for p in out.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"model.safetensors", "config.json", "history.json"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_failed_write_leaves_no_temporary_file(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    keep = [tmp_path / "history.json", tmp_path / ".hidden", tmp_path / "x.tmp"]
    stale = [tmp_path / ".history.json.k2j3.tmp", tmp_path / ".train_state.pt.abc.tmp"]
    for path in keep + stale:
        path.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_read_only_file_system_is_named(tmp_path, monkeypatch):
    """A read-only mount cannot be made here (no mount as a test); its errno is simulated."""
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(UserError, match="is not writable: read-only file system"):
        check_writable(tmp_path / "out")
    with pytest.raises(UserError, match=r"could not write .*Read-only file system"):
        write_text(tmp_path / "out.json", "x")
    assert list(tmp_path.iterdir()) == []
