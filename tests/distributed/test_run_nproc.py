"""``robustlab --nproc 2 run``: every rank runs the study's steps, rank 0 alone writes.

A tiny leaf study on digits at 12 px: the attacked target is a ``run:`` folder, so both runs
attack the same weights and its sharded attack curves must equal the one-process run's bit for
bit (each torchrun rank has one thread, as the in-process run here); the surrogate is trained
by the study itself, with DDP across the ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from robustlab.cli import main

pytestmark = pytest.mark.slow  # two torchrun processes, two studies: about a minute

TRAIN = [
    "train", "--data", "digits", "--image-size", "12", "--model", "small-cnn",
    "--strategy", "scratch", "--optimizer", "adam", "--lr", "3e-3", "--epochs", "1",
    "--limit", "300",
]  # fmt: skip


def tiny_study(target_run: Path) -> dict:
    return {
        "study": "leaf",
        "title": "tiny leaf study for --nproc",
        "seed": 0,
        "data": {"name": "digits", "image_size": 12, "limit": 300, "seed": 0},
        "models": [
            {"name": "target", "run": str(target_run)},
            {
                "name": "cnn",
                "arch": "small-cnn",
                "strategy": "scratch",
                "optimizer": "adam",
                "lr": 1.0e-3,
                "epochs": 1,
                "batch_size": 32,
                "seed": 1,
            },
        ],
        "surrogate": "cnn",
        "target": "target",
        "eval_batch_size": 16,
        "curves": [
            {
                "name": "pgd",
                "attack": {"name": "pgd", "settings": {"steps": 2}},
                "eps": [0.05, 0.1],
                "limit": 40,
                "noise": True,
                "examples": 1,
            }
        ],
        "example": {"eps": 0.05, "indices": [0]},
    }


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs must not believe they run under torchrun."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def study_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("nproc-study")
    assert main([*TRAIN, "--out", str(folder / "target-run")]) == 0
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study(folder / "target-run")))
    return path


def robustlab_nproc2(args: list[str], cwd: Path, tmpdir: Path) -> subprocess.CompletedProcess:
    """``robustlab --nproc 2 ARGS`` in a child; its ranks' temporary folders go in ``tmpdir``."""
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE")}
    env |= {"OMP_NUM_THREADS": "1", "TMPDIR": str(tmpdir)}
    return subprocess.run(
        [sys.executable, "-m", "robustlab", "--nproc", "2", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,  # a hang guard only
        check=False,
    )


def files_in(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def curves_of(path: Path, kinds: tuple[str, ...]) -> list[dict]:
    return [curve for curve in read_json(path)["curves"] if curve["kind"] in kinds]


def test_nproc_2_study_writes_once_and_attacks_like_one_process(study_file, tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank: identical kernels, identical bits
    try:
        assert main(["run", str(study_file), "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    two = robustlab_nproc2(["run", str(study_file), "--out", "two"], tmp_path, scratch)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Traceback" not in two.stderr
    assert "stay idle" not in two.stderr  # every rank ran the study, not rank 0 alone
    assert two.stdout.count('"run_dir"') == 1  # rank 0 alone prints the summary
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    # the same files, written once: no stray, temporary or per-rank files in the run dir
    assert files_in(two_dir) == files_in(one_dir)
    assert not any(name.endswith(".tmp") or "rank" in name for name in files_in(two_dir))
    # rank 1's scratch folders are gone
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("robustlab-rank")]

    one, both = read_json(one_dir / "results.json"), read_json(two_dir / "results.json")
    assert one["steps"].keys() == both["steps"].keys()
    for step in ("data", "train-target", "examples"):  # the loaded target: same weights
        assert one["steps"][step] == both["steps"][step], step
    for key in ("clean_accuracy", "n", "epsilons"):
        assert one["steps"]["attack-pgd"][key] == both["steps"]["attack-pgd"][key]
    kinds = ("white-box", "noise")  # on the target; black-box comes from the DDP-trained cnn
    assert curves_of(one_dir / "attack-pgd" / "curves.json", kinds) == curves_of(
        two_dir / "attack-pgd" / "curves.json", kinds
    )
    # the surrogate trained with DDP: every test image scored, accuracy within rounding
    n_test = one["steps"]["data"]["sizes"]["test"]
    trained = one["steps"]["train-cnn"], both["steps"]["train-cnn"]
    assert trained[0]["epochs_run"] == trained[1]["epochs_run"] == 1
    assert abs(trained[0]["test_accuracy"] - trained[1]["test_accuracy"]) <= 2 / n_test


def test_nproc_2_resume_runs_nothing_again(study_file, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    two = robustlab_nproc2(["run", str(study_file), "--out", "two"], tmp_path, scratch)
    assert two.returncode == 0, two.stderr[-3000:]
    two_dir = tmp_path / "two"
    both = read_json(two_dir / "results.json")
    # resumed under --nproc 2: rank 0 finds every step done, nothing runs or is rewritten again
    markers = {path: path.stat().st_mtime_ns for path in two_dir.glob("*/done.json")}
    again = robustlab_nproc2(["run", str(study_file), "--out", "two"], tmp_path, scratch)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in markers} == markers
    assert read_json(two_dir / "results.json")["steps"] == both["steps"]
    assert json.loads(again.stdout) == json.loads(two.stdout)


def test_nproc_2_refusal_is_one_line_and_leaves_the_folder_alone(study_file, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = robustlab_nproc2(["run", str(study_file), "--out", str(out)], tmp_path, tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("robustlab: error: "), done.stderr
    assert "is not empty and holds no study run" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
