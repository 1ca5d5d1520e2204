"""Runs are never destroyed or mixed: safe --overwrite, refused changed resumes, one owner.

* ``train --overwrite`` trains beside the old run and swaps it in only when finished: an error
  or Ctrl-C (raised here from inside training, deterministically) leaves the old run byte for
  byte as it was.
* Resuming an unfinished training with other settings is refused in one line naming the change.
* A second process on a locked output (the lock held by this test process) gets one line.
* ``attack --out`` over finished results needs ``--overwrite``.
* Temporary files a kill left are removed when the run resumes.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from conftest import (
    DIGITS,
    SMALL_CNN,
    assert_one_line_error,
    call_cli,
    kill_when,
    read_json,
    run_cli,
    start_cli,
)

from robustlab.distributed import ChunkStore
from robustlab.outdir import LOCK_FILE, OutputLock, Replacement, claim
from robustlab.training import loop

TRAIN = ("train", *DIGITS, *SMALL_CNN, "--limit", "200", "--batch-size", "32")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, by relative path; a lock file (empty, left by kill -9) aside."""
    files = (p for p in folder.rglob("*") if p.is_file() and p.name != LOCK_FILE)
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def no_leftovers(parent: Path) -> None:
    """No staging / retired folders, lock files or temporary files anywhere below ``parent``."""
    names = [p.name for p in parent.rglob("*")]
    assert not [n for n in names if n.endswith((".overwrite", ".replaced", ".tmp"))], names
    assert LOCK_FILE not in names


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from robustlab.cli import main

    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([str(a) for a in (*TRAIN, "--epochs", "1", "--out", out)]) == 0
    return out


def interrupt_after_epochs(monkeypatch: pytest.MonkeyPatch, epochs: int, error: BaseException):
    """Make training raise ``error`` right after saving the state of epoch ``epochs``."""
    save = loop._save_state

    def save_then_fail(state_dir, model, optimizer, phase, history, best):
        save(state_dir, model, optimizer, phase, history, best)
        if len(history) >= epochs:
            raise error

    monkeypatch.setattr(loop, "_save_state", save_then_fail)


@pytest.mark.parametrize(
    "error, code",
    [(KeyboardInterrupt(), 130), (RuntimeError("boom"), None)],
    ids=["ctrl-c", "error"],
)
def test_interrupted_overwrite_leaves_the_old_run_intact(
    finished_run, tmp_path, capsys, monkeypatch, error, code
):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    interrupt_after_epochs(monkeypatch, 1, error)
    args = [*TRAIN, "--epochs", "2", "--overwrite", "--out", out]
    if code is None:
        with pytest.raises(RuntimeError, match="boom"):
            call_cli(args, capsys)
    else:
        assert call_cli(args, capsys)[0] == code
    assert snapshot(out) == before
    no_leftovers(tmp_path)

    monkeypatch.undo()
    status, _, err = call_cli(args, capsys)  # the same command, not interrupted, replaces it
    assert status == 0, err
    assert read_json(out / "config.json")["train"]["epochs"] == 2
    assert [h["epoch"] for h in read_json(out / "history.json")] == [1, 2]
    no_leftovers(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_signalled_overwrite_leaves_the_old_run_intact(finished_run, tmp_path, capsys, sig):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    args = [*TRAIN, "--epochs", "3", "--overwrite", "--out", out]
    child = start_cli(args, tmp_path)
    staging = Replacement(out).staging
    kill_when(child, lambda: (staging / loop.STATE_FILE).exists(), sig=sig)
    # valid at any kill moment: the old run intact (at its place, or - killed between the
    # swap's two renames - set aside to be restored), or the new one complete in its place
    retired = Replacement(out).retired
    replaced = finished(out, epochs=3)
    assert replaced or snapshot(out if out.exists() else retired) == before
    if sig == signal.SIGTERM:  # unwound like Ctrl-C, the swap never cut: nothing left beside
        assert out.exists()
        no_leftovers(tmp_path)
    if not replaced:
        code, _, err = call_cli(args, capsys)  # the leftover of a SIGKILL goes on the next start
        assert code == 0, err
    assert finished(out, epochs=3)
    no_leftovers(tmp_path)


def finished(run: Path, epochs: int) -> bool:
    """``run`` holds a complete run trained for ``epochs`` epochs."""
    complete = (run / "config.json").exists() and not (run / loop.STATE_FILE).exists()
    return complete and read_json(run / "config.json")["train"]["epochs"] == epochs


def test_finished_run_needs_overwrite(finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    code, _, err = call_cli([*TRAIN, "--epochs", "1", "--out", out], capsys)
    assert_one_line_error(code, err, "already holds a trained model", "--overwrite")


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped (Ctrl-C) after its first of 3 epochs: train_state.pt, no model."""
    out = tmp_path_factory.mktemp("unfinished") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        interrupt_after_epochs(monkeypatch, 1, KeyboardInterrupt())
        from robustlab.cli import main

        assert main([str(a) for a in (*TRAIN, "--epochs", "3", "--out", out)]) == 130
    assert (out / loop.STATE_FILE).exists() and not (out / "model.safetensors").exists()
    return out


CHANGES = {
    "--lr": ("0.01", "train.lr: 0.003 -> 0.01"),
    "--epochs": ("4", "train.epochs: 3 -> 4"),
    "--optimizer": ("sgd", "train.optimizer: 'adam' -> 'sgd'"),
    "--seed": ("5", "train.seed: 0 -> 5"),
    "--limit": ("300", "data.limit: 200 -> 300"),
    "--image-size": ("16", "data.image_size: 12 -> 16"),
    "--drop-rate": ("0.5", "model.drop_rate: 0.0 -> 0.5"),
}


def with_option(args: list, flag: str, value: str) -> list:
    """``args`` with ``flag`` set to ``value`` (replaced where given, else appended)."""
    if flag not in args:
        return [*args, flag, value]
    at = args.index(flag)
    return [*args[: at + 1], value, *args[at + 2 :]]


@pytest.mark.parametrize("flag", sorted(CHANGES))
def test_resume_with_changed_settings_is_refused_naming_the_change(
    unfinished_run, tmp_path, capsys, flag
):
    out = tmp_path / "run"
    shutil.copytree(unfinished_run, out)
    before = snapshot(out)
    value, change = CHANGES[flag]
    args = with_option([*TRAIN, "--epochs", "3", "--out", out], flag, value)
    code, _, err = call_cli(args, capsys)
    assert_one_line_error(code, err, "unfinished training with other settings", change)
    assert snapshot(out) == before


def test_resume_with_the_same_settings_finishes_and_removes_stale_temporaries(
    unfinished_run, tmp_path, capsys
):
    out = tmp_path / "run"
    shutil.copytree(unfinished_run, out)
    stale = out / ".train_state.pt.k3j2x9.tmp"  # what a kill during a save leaves
    stale.write_bytes(b"half a file")
    code, _, err = call_cli([*TRAIN, "--epochs", "3", "--out", out], capsys)
    assert code == 0, err
    assert [h["epoch"] for h in read_json(out / "history.json")] == [1, 2, 3]
    no_leftovers(tmp_path)


def test_unfinished_run_with_overwrite_starts_over(unfinished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(unfinished_run, out)
    code, _, err = call_cli(
        [*TRAIN, "--epochs", "1", "--lr", "0.01", "--overwrite", "--out", out], capsys
    )
    assert code == 0, err
    assert read_json(out / "config.json")["train"]["lr"] == 0.01
    assert not (out / loop.STATE_FILE).exists()
    no_leftovers(tmp_path)


def locked_commands(run: Path, tmp: Path, out: Path) -> dict[str, list]:
    attack = ["--attack", "fgsm", "--eps", "0.1"]
    return {
        "train": [*TRAIN, "--epochs", "1", "--out", out],
        "attack": ["attack", run, *attack, "--out", out],
        "evaluate": ["evaluate", run, *attack, "--out", out],
        "run": ["run", "leaf", "--set", "data.limit=60", "--out", out],
    }


@pytest.mark.parametrize("command", ["train", "attack", "evaluate", "run"])
def test_second_process_on_a_locked_output_gets_one_line(untrained_run, tmp_path, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    lock = OutputLock(out, "--out").acquire()  # another flock on its own open file: a conflict
    try:
        args = locked_commands(untrained_run, tmp_path, out)[command]
        code, _, err = call_cli(args, capsys)
        assert_one_line_error(code, err, "in use by another robustlab process", str(out))
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing written
    finally:
        lock.release()


def test_locked_output_is_refused_across_processes(untrained_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lock = OutputLock(out, "--out").acquire()
    try:
        child = run_cli(
            ["attack", untrained_run, "--attack", "fgsm", "--eps", "0.1", "--out", out], tmp_path
        )
    finally:
        lock.release()
    assert_one_line_error(child.returncode, child.stderr, "in use by another robustlab process")


def test_clean_evaluation_locks_the_run(untrained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(untrained_run, run)
    lock = OutputLock(run, "RUN_DIR").acquire()
    try:
        code, _, err = call_cli(["evaluate", run], capsys)
    finally:
        lock.release()
    assert_one_line_error(code, err, "in use")


def small_attack(run: Path, out: Path, *extra: str) -> list:
    return ["attack", run, "--attack", "fgsm", "--limit", "16", "--out", out, *extra]


def test_attack_results_need_overwrite(untrained_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert call_cli(small_attack(untrained_run, out, "--eps", "0.1"), capsys)[0] == 0
    before = snapshot(out)
    code, _, err = call_cli(small_attack(untrained_run, out, "--eps", "0.2"), capsys)
    assert_one_line_error(code, err, "already holds attack results", "--overwrite")
    assert snapshot(out) == before
    again = small_attack(untrained_run, out, "--eps", "0.2", "--overwrite")
    code, _, err = call_cli(again, capsys)
    assert code == 0, err
    assert read_json(out / "attack.json")["epsilons"] == [0.2]
    no_leftovers(tmp_path)


def test_attack_overwrite_without_adversarials_drops_the_old_ones(untrained_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert call_cli(small_attack(untrained_run, out, "--eps", "0.1"), capsys)[0] == 0
    assert (out / "adversarials.safetensors").exists()
    again = small_attack(untrained_run, out, "--eps", "0.1", "--overwrite", "--no-adversarials")
    assert call_cli(again, capsys)[0] == 0
    assert not (out / "adversarials.safetensors").exists()  # never paired with other results
    assert read_json(out / "attack.json")["adversarials_file"] is None


def test_chunk_store_removes_a_stale_temporary_of_the_chunk_it_loads(tmp_path):
    store = ChunkStore(tmp_path, {"a": 1})
    store.save(0, {"x": 1})
    stale = [tmp_path / ".chunk-000000.pt.abc.tmp", tmp_path / ".chunk-000001.pt.xyz.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    assert store.load(0) == {"x": 1}
    assert store.load(1) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk-000000.pt"]


def test_a_swap_cut_between_its_renames_restores_the_old_folder(tmp_path):
    target = tmp_path / "run"
    replacement = Replacement(target)
    replacement.retired.mkdir()
    (replacement.retired / "model.safetensors").write_bytes(b"old")
    replacement.recover()
    assert (target / "model.safetensors").read_bytes() == b"old"
    assert not replacement.retired.exists()
    replacement.retired.mkdir()  # cut after both renames: the new run is in place
    replacement.recover()
    assert (target / "model.safetensors").read_bytes() == b"old"
    assert not replacement.retired.exists()


def test_a_kill_leaves_a_lock_file_that_does_not_block(tmp_path):
    (tmp_path / LOCK_FILE).write_text("")  # what SIGKILL leaves: a file nobody locks
    lock = OutputLock(tmp_path, "--out").acquire()
    lock.release()
    assert list(tmp_path.iterdir()) == []


def test_resumed_study_removes_stale_temporaries(tmp_path):
    from robustlab.studies.runner import prepare_run_dir

    config = {"study": "x", "seed": 0}
    prepare_run_dir(tmp_path, config)
    step = tmp_path / "train-a"
    step.mkdir()
    stale = [tmp_path / ".results.json.ab12.tmp", step / ".train_state.pt.cd34.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    prepare_run_dir(tmp_path, config)  # the resume
    assert not any(path.exists() for path in stale)
    assert (tmp_path / "config.json").exists()


@pytest.mark.parametrize("command", [["models"], ["data", "list"]])
def test_every_command_makes_openmp_wait_passively(monkeypatch, capsys, command):
    monkeypatch.setenv("OMP_WAIT_POLICY", "unset-by-test")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert call_cli(command, capsys)[0] == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice is kept
    assert call_cli(command, capsys)[0] == 0
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_claiming_an_output_removes_stale_temporaries_of_killed_writes(tmp_path):
    stale = tmp_path / ".attack.json.x1y2.tmp"
    stale.write_text("half")
    keep = tmp_path / "attack.json"
    keep.write_text("{}")
    claim(tmp_path).release()
    assert sorted(tmp_path.iterdir()) == [keep]
