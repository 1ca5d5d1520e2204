"""``robustlab attack``: results written atomically, every user error caught before writing."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import NUM_CLASSES, make_model

import robustlab.cli.attack as cli_attack
from robustlab.cli import main

CLASSES = ["a", "b", "c", "d"]


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """A run directory whose loading is replaced by a tiny model and 20 random images."""
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(20, 3, 16, 16, generator=generator)
    model = make_model()
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[:2] = (labels[:2] + 1) % NUM_CLASSES  # two clean errors
    imageset = SimpleNamespace(images=images, labels=labels, classes=tuple(CLASSES))
    config = {"classes": CLASSES, "data": {"name": "fake"}}
    calls = []

    def load_run(run_dir, split, data_dir):
        calls.append((run_dir, split, data_dir))
        return make_model(), config, imageset

    monkeypatch.setattr(cli_attack, "load_run", load_run)
    return SimpleNamespace(dir=tmp_path / "run", out=tmp_path / "out", calls=calls, labels=labels)


def _attack(run, *extra):
    return main(["attack", str(run.dir), "--out", str(run.out), *extra])


def test_writes_results_and_adversarials(fake_run):
    flags = "--attack pgd --eps 0:8/255:3 --steps 3 --limit 15 --batch-size 4 --seed 1"
    rc = _attack(fake_run, *flags.split())
    assert rc == 0
    record = json.loads((fake_run.out / "attack.json").read_text())
    assert record["format"] == "robustlab-attack"
    assert record["attack"]["name"] == "pgd" and record["attack"]["settings"]["steps"] == 3
    assert record["attack"]["settings"]["seed"] == 1
    assert record["epsilons"] == pytest.approx([0, 4 / 255, 8 / 255])
    assert record["n"] == 15 and record["split"] == "test"
    assert record["clean_accuracy"] == pytest.approx(13 / 15)
    for key in (
        "robust_accuracy",
        "success_rate",
        "success_rate_on_correct",
        "delta_linf_mean",
        "delta_linf_max",
        "delta_l2_mean",
        "delta_l2_max",
    ):
        assert len(record[key]) == 3, key
    assert record["robust_accuracy"][0] == record["clean_accuracy"]
    assert record["robust_accuracy"] == sorted(record["robust_accuracy"], reverse=True)
    assert max(record["delta_linf_max"]) <= 8 / 255 + 1e-6
    assert record["seconds"] > 0 and record["worst_case"] is True
    from safetensors.torch import load_file

    tensors = load_file(str(fake_run.out / "adversarials.safetensors"))
    assert tensors["eps_0.0"].shape == (15, 3, 16, 16)
    assert f"eps_{8 / 255!r}" in tensors
    assert torch.equal(tensors["labels"], fake_run.labels[:15])
    assert tensors["clean_pred"].shape == tensors["indices"].shape == (15,)
    assert sorted(p.name for p in fake_run.out.iterdir()) == [
        "adversarials.safetensors",
        "attack.json",
    ]


def test_targeted_min_norm_and_no_adversarials(fake_run):
    flags = "--attack minimal --eps 0.01,0.05 --targeted c --set search_steps=3 --no-adversarials"
    rc = _attack(fake_run, *flags.split())
    assert rc == 0
    record = json.loads((fake_run.out / "attack.json").read_text())
    assert record["target_class"] == 2 and record["target_name"] == "c"
    excluded = int((fake_run.labels == 2).sum())
    assert record["excluded_target_class"] == excluded and record["n"] == 20 - excluded
    assert len(record["robust_accuracy_from_min_eps"]) == 2
    assert record["adversarials_file"] is None
    assert not (fake_run.out / "adversarials.safetensors").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", "pgd", "--eps", "-0.1"], "--eps must be >= 0"),
        (["--attack", "pgd", "--eps", "1.5"], "--eps must be <= 1"),
        (["--attack", "pgd", "--eps", "nan"], "NaN"),
        (["--attack", "pgd", "--eps", "0.1:0.2"], "start:stop:count"),
        (["--attack", "pdg", "--eps", "0.1"], "did you mean 'pgd'"),
        (["--attack", "pgd", "--eps", "0.1", "--steps", "0"], r"pgd\.steps must be >= 1"),
        (["--attack", "fgsm", "--eps", "0.1", "--steps", "3"], "'steps'"),
        (["--attack", "pgd", "--eps", "0.1", "--set", "restartz=2"], "restartz"),
        (["--attack", "pgd", "--eps", "0.1", "--set", "restarts"], "KEY=VALUE"),
        (["--attack", "filter", "--eps", "0.1"], "no epsilon"),
        (["--attack", "pgd", "--eps", "0.1", "--limit", "0"], "--limit"),
        (["--attack", "pgd", "--eps", "0.1", "--batch-size", "0"], "--batch-size"),
        (["--attack", "pgd", "--eps", "0.1", "--targeted", "7"], "out of range"),
        (
            ["--attack", "pgd", "--eps", "0.1", "--targeted", "dog"],
            "--targeted: unknown class 'dog'",
        ),
        (["--attack", "pgd", "--eps", "0.1", "--steps", "2", "--set", "steps=3"], "given twice"),
        (["--attack", "sign-noise", "--eps", "0.1", "--loss", "ce"], "'loss'"),
        (["--attack", "pgd", "--eps", "0.1", "--loss", "cw"], r"pgd\.loss must be one of"),
        (["--attack", "pgd", "--eps", "0.1", "--seed", "x"], r"pgd\.seed must be an integer"),
        *[
            (["--attack", name, "--eps", "0.02", "--steps", "2", "--set", setting], message)
            for name, setting, message in [
                ("autoattack", "queries=-1", "autoattack.queries must be >= 1"),
                ("apgd", "eot_samples=0", "apgd.eot_samples must be >= 1"),
                ("apgd-t", "top_k=4", "apgd-t.top_k must be <= 3"),
                ("fab", "top_k=9", "fab.top_k must be <= 3"),
                ("autoattack", "version=fast", "autoattack.version"),
            ]
        ],
    ],
)
def test_user_errors_exit_2_and_write_nothing(fake_run, capsys, args, message):
    assert _attack(fake_run, *args) == 2
    err = capsys.readouterr().err
    assert message in err or re.search(message, err), err
    assert len(err.strip().splitlines()) == 1
    assert not fake_run.out.exists() or not any(fake_run.out.iterdir())


def test_validation_happens_before_loading(fake_run):
    _attack(fake_run, "--attack", "pgd", "--eps", "2")
    assert fake_run.calls == []


def test_real_run_directory(tmp_path):
    """End to end with the project's own checkpoint and data loaders on a tiny .npz."""
    models = pytest.importorskip("robustlab.models")
    data = pytest.importorskip("robustlab.data")
    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(
        npz, images=rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8), labels=np.arange(40) % 2
    )
    spec = data.DataSpec(name=str(npz), seed=0)
    model = models.create_model(models.ModelSpec(arch="simple-cnn", num_classes=2, input_size=16))
    run_dir = tmp_path / "run"
    config = {
        "classes": ["zero", "one"],
        "data": json.loads(json.dumps(spec.__dict__, default=list)),
    }
    models.save_checkpoint(run_dir, model, config)
    out = tmp_path / "out"
    rc = main(
        [
            "attack",
            str(run_dir),
            "--attack",
            "fgsm",
            "--eps",
            "0.01,0.03",
            "--split",
            "val",
            "--out",
            str(out),
            "--data-dir",
            str(tmp_path),
        ]
    )
    assert rc == 0
    record = json.loads((out / "attack.json").read_text())
    test_split = data.load_splits(spec).val
    assert record["n"] == test_split.images.shape[0]
    assert record["split"] == "val" and record["robust_accuracy"][0] >= record["robust_accuracy"][1]
