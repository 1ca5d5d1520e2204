"""Import + PGD-10 on an ONNX export vs the same PGD-10 on the native robustlab model.

``tf_efficientnet_lite0`` with its offline ImageNet weights (and a fresh 2-class head) is saved as
an ordinary run on the leaf data set and exported to ONNX (torch's exporter, opset 17, the newest
onnx2torch converts). Side by side in one process, alternating and repeated, it times:

* native:  ``robustlab attack RUN --attack pgd --steps 10`` on the native run;
* imported: ``robustlab import model.onnx`` + the same ``robustlab attack`` on the imported run.

It prints both times (median of the repeats), their ratio (goal: <= 1.2x), and the two runs'
robust accuracies, which should agree (the ONNX graph is the same function).

    .venv/bin/python benchmarks/bench_import.py [--images 32] [--repeats 3] [--threads 2]

Defaults take 2-4 minutes on 2 CPU cores; needs the leaf data (``plantvillage-tomato``) and
the ``import`` extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from robustlab.cli import main
from robustlab.data import DataSpec, load_splits
from robustlab.models import ModelSpec, create_model, save_checkpoint

GOAL = 1.2


def native_run(folder: Path, images: int) -> tuple[Path, DataSpec]:
    """The offline Lite0 (fresh head) as a run directory on ``images`` leaf test images."""
    spec = DataSpec(name="plantvillage-tomato", task="unhealthy", limit=images * 4,
                    split=(0.5, 0.25, 0.25), channels=3)
    splits = load_splits(spec)
    torch.manual_seed(0)
    model = create_model(ModelSpec("tf_efficientnet_lite0", num_classes=2, pretrained="offline",
                                   input_size=int(splits.test.images.shape[-1]))).eval()
    run = folder / "native"
    save_checkpoint(run, model, {"classes": list(splits.test.classes),
                                 "data": dataclasses.asdict(spec), "data_info": splits.info()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        side = int(splits.test.images.shape[-1])
        torch.onnx.export(model, (torch.rand(1, 3, side, side),), str(folder / "lite0.onnx"),
                          dynamo=False, opset_version=17, input_names=["images"],
                          dynamic_axes={"images": {0: "batch"}})
    return run, spec


def attack(run: Path, out: Path) -> list[float]:
    code = main(["attack", str(run), "--attack", "pgd", "--eps", "2/255", "--steps", "10",
                 "--out", str(out), "--no-adversarials", "--device", "cpu"])
    assert code == 0, f"attack on {run} failed"
    return json.loads((out / "attack.json").read_text())["robust_accuracy"]


def import_and_attack(folder: Path, spec: DataSpec, out: Path) -> list[float]:
    imported = out / "run"
    code = main(["import", str(folder / "lite0.onnx"), "--out", str(imported), "--data", spec.name,
                 "--task", spec.task, "--limit", str(spec.limit), "--split", "0.5,0.25,0.25"])
    assert code == 0, "import failed"
    return attack(imported, out / "pgd")


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="test images attacked")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    times: dict[str, list[float]] = {"native": [], "imported": []}
    accuracy: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run, spec = native_run(folder, args.images)
        for repeat in range(args.repeats):
            order = ("native", "imported") if repeat % 2 == 0 else ("imported", "native")
            for name in order:
                out = folder / f"{name}-{repeat}"
                start = time.perf_counter()
                if name == "native":
                    accuracy[name] = attack(run, out)
                else:
                    accuracy[name] = import_and_attack(folder, spec, out)
                times[name].append(time.perf_counter() - start)
    native, imported = (statistics.median(times[k]) for k in ("native", "imported"))
    print(f"images attacked: {args.images}, PGD-10 at eps 2/255, {args.repeats} repeats")
    print(f"native   : {native:7.2f} s  robust accuracy {accuracy['native']}")
    print(f"imported : {imported:7.2f} s  robust accuracy {accuracy['imported']}  (import included)")
    ratio = imported / native
    print(f"ratio imported/native: {ratio:.2f}x (goal <= {GOAL}x) -> {'OK' if ratio <= GOAL else 'MISSED'}")


if __name__ == "__main__":
    main_bench()
