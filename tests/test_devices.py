"""Devices: ``--device auto``, and a CPU-only check that attacks never assume CPU tensors.

Without a GPU the check audits what a GPU run would trip over: every tensor that robustlab's
attack and evaluation code creates from scratch names its device (so it follows the model), and
attack code never pulls tensors to the CPU mid-attack; ``*_like``/``new_*`` follow their source.
"""

from __future__ import annotations

import collections
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

from robustlab.attacks import get_attack, list_attacks, sweep, sweep_dataset
from robustlab.devices import pin_for, resolve_device, to_device
from robustlab.errors import UserError
from robustlab.evaluation import accuracy as accuracy_module
from robustlab.models import ModelSpec, create_model

FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.rand, torch.randn,
             torch.randint, torch.randperm, torch.arange, torch.linspace, torch.tensor,
             torch.as_tensor, torch.eye, torch.normal}
TO_HOST = {torch.Tensor.cpu, torch.Tensor.numpy}


class DeviceAudit(TorchFunctionMode):
    """Records device-less tensor factories and host copies called from code under ``root``."""

    def __init__(self, root: str, host_root: str) -> None:
        super().__init__()
        self.root, self.host_root = root, host_root
        self.factories: collections.Counter[str] = collections.Counter()
        self.host_copies: collections.Counter[str] = collections.Counter()

    def _caller(self, root: str) -> str | None:
        frames = [f for f in traceback.extract_stack()[:-2] if root in f.filename]
        # folder/file.py:line of the innermost frame under root
        return f"{'/'.join(frames[-1].filename.rsplit('/', 2)[-2:])}:{frames[-1].lineno}" if frames else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs and (where := self._caller(self.root)):
            self.factories[f"{where} {func.__name__}"] += 1
        if func in TO_HOST and (where := self._caller(self.host_root)):
            self.host_copies[f"{where} {func.__name__}"] += 1
        return func(*args, **kwargs)


def _tiny():
    return create_model(ModelSpec("simple-cnn", 3, input_size=16)).eval()


def test_audit_catches_a_device_less_tensor():
    with DeviceAudit("test_devices.py", "test_devices.py") as audit:
        torch.zeros(3)
        torch.zeros(3, device="cpu")
        torch.ones(2).cpu()
    assert sum(audit.factories.values()) == 2  # zeros(3) and ones(2); not the one with device
    assert sum(audit.host_copies.values()) == 1


@pytest.mark.parametrize("name", list_attacks())
def test_attacks_create_tensors_on_the_models_device(name):
    # 4 classes: targeted DLR (apgd-t) needs a 4th logit
    model = create_model(ModelSpec("simple-cnn", 4, input_size=16)).eval()
    x = torch.rand(6, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    target = torch.tensor([1, 2, 0, 1, 2, 0])
    settings = {"eps": 0.03} if name != "filter" else {"iterations": 3}
    if name in ("cw-l2",):
        settings |= {"steps": 3, "binary_search_steps": 2}
    if name in ("apgd-t", "apgd-t-l2", "fab"):
        settings |= {"top_k": 2}
    attack = get_attack(name, **settings)
    with DeviceAudit("/robustlab/", "/robustlab/attacks/") as audit:
        if name == "filter":
            adversarial = attack(model, x, y, target=target)
        else:
            adversarial = attack(model, x, y)
            sweep(attack, model, x, y, [0.01, 0.03])
    assert adversarial.device == x.device
    assert not audit.factories, f"tensors created without a device: {dict(audit.factories)}"
    assert not audit.host_copies, f"attack code copies to the CPU: {dict(audit.host_copies)}"


def test_dataset_sweep_and_scoring_create_tensors_on_the_models_device():
    model = _tiny()
    x, y = torch.rand(10, 3, 16, 16), torch.randint(0, 3, (10,))
    with DeviceAudit("/robustlab/", "/robustlab/attacks/base.py") as audit:
        sweep_dataset(get_attack("pgd", eps=0.03, steps=2), model, x, y, [0.03], batch_size=4,
                      device="cpu")
        accuracy_module.predict_logits(model, x, batch_size=4)
    assert not audit.factories, f"tensors created without a device: {dict(audit.factories)}"


def test_auto_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_is_this_ranks_gpu_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)


@pytest.mark.parametrize("name", ["gpu0", "cuda:x"])
def test_bad_device_names_are_user_errors(name):
    with pytest.raises(UserError, match="--device"):
        resolve_device(name)


def test_cuda_without_cuda_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda")


def test_cpu_copies_are_plain():
    x = torch.rand(4, 3)
    assert pin_for(x, "cpu") is x
    assert to_device(x, "cpu") is x
    assert to_device(x, None) is x


MODEL_COMMANDS = ("train", "evaluate", "attack", "run", "import")


def _subparsers():
    from robustlab.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_command_that_runs_a_model_takes_device_auto(command):
    options = {a.dest: a for a in _subparsers()[command]._actions}
    assert options["device"].default == "auto"


def test_run_on_a_missing_gpu_is_one_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    from robustlab.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "study"
    assert main(["run", "leaf", "--out", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robustlab: error: --device cuda") and "\n" not in err
    assert not out.exists()


TINY_LEAF = [
    "data.name=digits", "data.task=null", "data.image_size=16", "data.channels=3",
    "data.limit=120", "models.*.epochs=1", "transfer.limit=16", "example.indices=[0]",
    'models=[{name: a, arch: simple-cnn, strategy: scratch, epochs: 1},'
    ' {name: b, arch: simple-cnn, strategy: scratch, epochs: 1, seed: 1}]',
    "surrogate=a", "target=b",
    'curves=[{name: fgsm, attack: {name: ifgsm, settings: {steps: 1}}, eps: [0.05], limit: 16,'
    ' examples: 1}]',
]


def test_run_passes_its_device_to_every_step(monkeypatch, tmp_path):
    """``cpu:0`` is a device no default spells: every step's context and every training of
    the study must have been handed it, and study code creates no tensor without a device."""
    from robustlab.cli import main
    from robustlab.studies import runner
    from robustlab.training import recipe

    contexts, trained_on = [], []

    class RecordedContext(runner.StepContext):
        def __init__(self, **fields) -> None:
            super().__init__(**fields)
            contexts.append((self.step, self.device))

    def train_run(*args, device, **kwargs):
        trained_on.append(device)
        return real_train_run(*args, device=device, **kwargs)

    real_train_run = recipe.train_run
    monkeypatch.setattr(runner, "StepContext", RecordedContext)
    monkeypatch.setattr("robustlab.training.train_run", train_run)
    args = ["run", "leaf", "--out", str(tmp_path / "study"), "--device", "cpu:0"]
    with DeviceAudit("/robustlab/", "/robustlab/studies/") as audit:
        assert main([*args, *[a for item in TINY_LEAF for a in ("--set", item)]]) == 0
    steps = {step for step, _ in contexts}
    assert {"train-a", "train-b", "attack-fgsm", "examples", "transfer-matrix"} <= steps
    assert {device for _, device in contexts} == {"cpu:0"}
    assert trained_on == ["cpu:0", "cpu:0"]
    in_studies = {k: n for k, n in audit.factories.items() if k.startswith("studies/")}
    assert not in_studies, f"study code creates tensors without a device: {in_studies}"
