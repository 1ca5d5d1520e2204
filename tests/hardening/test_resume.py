"""Kill -9 and run the same command again: the final results equal an uninterrupted run's.

Each test starts the real command in a child process, waits (with a generous deadline, never a
fixed sleep) for the first unit of work to be saved (an epoch's state file, a sweep chunk, a
study step's done-marker), SIGKILLs it, runs the same command again to the end if the killed one
had not finished, and compares with an uninterrupted run, timing fields aside.

The kill may land at any moment after that, on a loaded machine even after the command has
finished: every outcome is valid as long as the final results are right. A temporary file of a
write the kill cut short is a correct outcome of SIGKILL; what must hold is that the resumed run
ignores and removes it, so leftovers are checked only once the results are complete.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import (
    DIGITS,
    SMALL_CNN,
    call_cli,
    files_under,
    kill_when,
    read_json,
    start_cli,
    without_timing,
)
from safetensors.torch import load_file

TRAIN = ("train", *DIGITS, *SMALL_CNN, "--epochs", "3", "--batch-size", "32", "--limit", "600")


def no_partial_files(folder: Path) -> None:
    """Nothing half-written: no temporary files of ``robustlab.io.atomic_path`` left behind."""
    leftovers = [p for p in files_under(folder) if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def weights_equal(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.slow
def test_training_killed_after_an_epoch_resumes_to_identical_weights(tmp_path, capsys):
    killed = tmp_path / "killed"
    child = start_cli([*TRAIN, "--out", killed], tmp_path)
    kill_when(child, lambda: (killed / "train_state.pt").exists())
    # the state file goes last: while it is there, the run is unfinished and resumes
    if (killed / "train_state.pt").exists() or not (killed / "model.safetensors").exists():
        code, _, err = call_cli([*TRAIN, "--out", killed], capsys)  # the same command again
        assert code == 0, err
    code, _, err = call_cli([*TRAIN, "--out", tmp_path / "straight"], capsys)
    assert code == 0, err

    weights_equal(killed, tmp_path / "straight")
    history = without_timing(read_json(killed / "history.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history == without_timing(read_json(tmp_path / "straight" / "history.json"))
    config = without_timing(read_json(killed / "config.json"))
    assert config == without_timing(read_json(tmp_path / "straight" / "config.json"))
    assert not (killed / "train_state.pt").exists()  # cleared once the run is complete
    no_partial_files(killed)


TINY_STUDY = """\
study: leaf
title: tiny leaf study on digits
seed: 0
data: {name: digits, image_size: 12, limit: 240}
models:
  - {name: a, arch: small-cnn, strategy: scratch, optimizer: adam, lr: 3.0e-3, epochs: 1}
  - {name: b, arch: small-cnn, strategy: scratch, optimizer: adam, lr: 3.0e-3, epochs: 2, seed: 1}
surrogate: a
target: b
eval_batch_size: 32
curves:
  - {name: pgd, attack: {name: pgd, settings: {steps: 2}}, eps: [0.05, 0.1], surrogates: [a],
     noise: true, examples: 1}
example: {attack: {name: fgsm}, eps: 0.1, indices: [0]}
transfer: {attack: {name: fgsm}, eps: 0.1}
shape_eps: 0.1
"""


@pytest.mark.slow
def test_study_killed_after_a_step_resumes_to_the_same_results(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_STUDY)
    killed = tmp_path / "killed"
    child = start_cli(["run", config, "--out", killed], tmp_path)
    kill_when(child, lambda: (killed / "train-a" / "done.json").exists())

    # the same command again (a finished study is only re-reported)
    code, _, err = call_cli(["run", config, "--out", killed], capsys)  # the same command again
    assert code == 0, err
    code, _, err = call_cli(["run", config, "--out", tmp_path / "straight"], capsys)
    assert code == 0, err

    resumed = without_timing(read_json(killed / "results.json"))
    straight = without_timing(read_json(tmp_path / "straight" / "results.json"))
    assert resumed == straight
    assert set(resumed["steps"]) >= {"data", "train-a", "train-b", "attack-pgd"}
    weights_equal(killed / "train-b", tmp_path / "straight" / "train-b")
    no_partial_files(killed)


ATTACK = ("--attack", "pgd", "--eps", "0.05,0.1", "--steps", "5", "--batch-size", "16")


@pytest.mark.slow
def test_attack_sweep_killed_after_a_chunk_resumes_to_the_same_results(
    untrained_run, tmp_path, capsys
):
    args = ["attack", untrained_run, *ATTACK, "--limit", "160"]
    killed = tmp_path / "killed"
    child = start_cli([*args, "--out", killed], tmp_path)
    kill_when(child, lambda: any((killed / ".chunks").glob("chunk-*.pt")))
    resumed = not (killed / "attack.json").exists()  # written last, atomically
    if resumed:
        code, _, err = call_cli([*args, "--out", killed], capsys)
        assert code == 0, err
        assert not (killed / ".chunks").exists()  # removed once the results are written
    code, _, err = call_cli([*args, "--out", tmp_path / "straight"], capsys)
    assert code == 0, err

    resumed = without_timing(read_json(killed / "attack.json"))
    assert resumed == without_timing(read_json(tmp_path / "straight" / "attack.json"))
    a = load_file(killed / "adversarials.safetensors")
    b = load_file(tmp_path / "straight" / "adversarials.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    no_partial_files(killed)
