"""Memory and speed of the streaming data path at scale, on synthetic data it makes itself.

    .venv/bin/python benchmarks/bench_data_scale.py                      # issue 13's sizes
    .venv/bin/python benchmarks/bench_data_scale.py --preset issue-12k   # 12 000 x 224 px only
    .venv/bin/python benchmarks/bench_data_scale.py --preset small --attack-steps 1  # small box
    .venv/bin/python benchmarks/bench_data_scale.py --images 1000 4000 --size 128 --untrained
    .venv/bin/python benchmarks/bench_data_scale.py --preset issue-12k --workdir W --skip train \
        memory nproc throughput   # attack W's trained 12 000-image run again (after a change)

Writes ``images.npy`` + ``labels.npy`` folders of N uint8 RGB images (10 classes, a colour per
class plus noise) and measures, side by side in one run:

* peak memory of ``robustlab train --model simple-cnn --strategy scratch --epochs 1`` and of
  ``robustlab attack --attack pgd`` (test split, ``--no-adversarials``: the kept adversarials of
  every image are a result that grows with N by design) at each N, streamed (the default above
  the memory budget), and at the first N with everything in memory (``$ROBUSTLAB_MEMORY_BUDGET``
  = 1T, what main did): targets <= 3 GB at 12 000 x 224 px, largest N <= 1.2x the first;
* images/s of a full forward pass of ``tf_efficientnet_lite0`` over the train split, streamed
  from the uint8 file vs in-memory float tensors (target >= 0.9x);
* ``--nproc 2`` training: peak memory per rank vs the single process in memory (target
  <= 0.6x); at small sizes torch's own memory per process dominates both, so the ratio is also
  printed above the fixed cost of a process (a 64-image run): the part that grows with the data;
* ``--nproc 2`` attack (also with ``--untrained``): peak memory per rank vs the single process
  in memory and streamed, at the first N (``--skip attack-nproc`` leaves it out).

Each ratio is printed with its target and whether it is met. ``--untrained`` attacks untrained
runs (memory and work of an attack do not depend on the weights) to measure attacks at sizes
where training would take hours.

Memory is sampled every 0.1 s over the whole process tree (DataLoader workers and ranks
included) as PSS, so pages shared after fork are counted once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CLASSES = 10
# streamed whatever the size (at the sizes the default budget streams anyway; reduced
# sizes would otherwise be measured in memory)
STREAM = {"ROBUSTLAB_MEMORY_BUDGET": "0"}


def make_data(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """A folder with ``images.npy`` (n, size, size, 3) uint8 written in chunks + labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    colours = rng.integers(40, 216, (CLASSES, 1, 1, 3))
    images = np.lib.format.open_memmap(
        folder / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
    )
    for start in range(0, n, 256):
        part = labels[start : start + 256]
        noise = rng.integers(-40, 41, (len(part), size, size, 3))
        images[start : start + len(part)] = np.clip(colours[part] + noise, 0, 255)
    images.flush()
    del images
    np.save(folder / "labels.npy", labels)
    return folder


class TreeMemory:
    """Peak PSS (MB) of a process tree, in total and per top-level rank."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak_total = 0.0
        self.peak_rank: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _pss(self, process) -> float:
        try:
            return process.memory_full_info().pss / 2**20
        except Exception:  # gone between listing and reading
            return 0.0

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except Exception:
                break
            self.peak_total = max(self.peak_total, sum(self._pss(p) for p in tree))
            for process in tree:  # a rank: a process with LOCAL_RANK whose parent has none
                try:
                    if "LOCAL_RANK" in process.environ() and "LOCAL_RANK" not in (
                        process.parent().environ()
                    ):
                        sub = [process, *process.children(recursive=True)]
                        mb = sum(self._pss(p) for p in sub)
                        self.peak_rank[process.pid] = max(self.peak_rank.get(process.pid, 0), mb)
                except Exception:
                    continue
            time.sleep(0.1)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()


def measure(command: list[str], env: dict[str, str]) -> tuple[float, dict[int, float], float]:
    """Run ``command``; its peak tree PSS, peak PSS per rank, and seconds. Fails loudly."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    memory = TreeMemory(process.pid)
    output, _ = process.communicate()
    memory.finish()
    if process.returncode != 0:
        sys.stdout.write(output.decode(errors="replace")[-3000:])
        raise SystemExit(f"failed: {' '.join(command)}")
    return memory.peak_total, memory.peak_rank, time.perf_counter() - started


def robustlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "robustlab", *args]


def train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return robustlab(
        *extra, "train", "--data", str(data), "--model", "simple-cnn", "--strategy", "scratch",
        "--epochs", "1", "--batch-size", "64", "--out", str(out),
    )  # fmt: skip


def attack_command(run: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return robustlab(
        *extra, "attack", str(run), "--attack", "pgd", "--eps", "8/255", "--steps", str(steps),
        "--no-adversarials", "--out", str(out),
    )  # fmt: skip


def throughput(data: Path, limit: int, batch_size: int, rounds: int) -> tuple[float, float]:
    """Images/s of a tf_efficientnet_lite0 forward over the train split: streamed, in memory."""
    import torch

    from robustlab.data import DataSpec, clear_caches, load_splits
    from robustlab.data.stream import ENV_BUDGET, batches
    from robustlab.models import ModelSpec, create_model

    torch.manual_seed(0)
    spec = DataSpec(str(data), limit=limit)
    sets = {}
    for name, budget in (("streamed", "0"), ("memory", "1T")):
        os.environ[ENV_BUDGET] = budget
        clear_caches()
        sets[name] = load_splits(spec).train.images
    del os.environ[ENV_BUDGET]
    shape = sets["memory"].shape
    model = create_model(
        ModelSpec(arch="tf_efficientnet_lite0", num_classes=CLASSES, input_size=shape[-1])
    ).eval()
    parts = [slice(s, s + batch_size) for s in range(0, shape[0], batch_size)]
    seconds = {"streamed": [], "memory": []}
    with torch.no_grad():
        for round_ in range(rounds):  # alternate: a shared machine slows both alike
            for name in ("streamed", "memory") if round_ % 2 == 0 else ("memory", "streamed"):
                started = time.perf_counter()
                for x in batches(sets[name], parts):
                    model(x)
                seconds[name].append(time.perf_counter() - started)
    return shape[0] / min(seconds["streamed"]), shape[0] / min(seconds["memory"])


def untrained_run(data: Path, out: Path) -> Path:
    """A run directory with an untrained simple-cnn on ``data``: what ``attack`` needs, at none
    of training's cost (an attack's memory and work do not depend on the weights)."""
    import dataclasses

    import torch

    from robustlab.data import DataSpec
    from robustlab.models import ModelSpec, create_model, save_checkpoint

    size = int(np.load(data / "images.npy", mmap_mode="r").shape[1])
    torch.manual_seed(0)
    model = create_model(ModelSpec(arch="simple-cnn", num_classes=CLASSES, input_size=size))
    config = {
        "classes": [str(i) for i in range(CLASSES)],
        "data": dataclasses.asdict(DataSpec(str(data))),
    }
    return save_checkpoint(out, model, config)


def verdict(label: str, value: float, target: float, at_most: bool = True, unit: str = "x") -> str:
    met = value <= target if at_most else value >= target
    sign = "<=" if at_most else ">="
    return f"{label:<58} {value:5.2f}{unit:<3} (target {sign} {target}{unit}: {'met' if met else 'MISSED'})"


class Bench:
    """One side-by-side run: every measurement under one environment, rows as they come."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = {**os.environ, "ROBUSTLAB_TCMALLOC": os.environ.get("ROBUSTLAB_TCMALLOC", "1")}
        self.peaks: dict[str, float] = {}

    def run(self, key: str, label: str, command: list[str], extra: dict[str, str]) -> float:
        """Peak PSS (MB) of ``command``: of its largest rank when it has ranks."""
        peak, ranks, seconds = measure(command, {**self.env, **extra})
        print(f"{label:<44} peak {peak / 1024:6.2f} GB  {seconds:7.1f} s", flush=True)
        if ranks:
            print(f"{'  per rank':<44} " + ", ".join(f"{v / 1024:.2f} GB" for v in ranks.values()))
        self.peaks[key] = max(ranks.values()) if ranks else peak
        return self.peaks[key]

    def data(self, n: int, size: int) -> Path:
        folder = self.work / f"data-{n}-{size}"
        if not (folder / "labels.npy").exists():
            print(f"making {n} images at {size} px in {folder} ...", flush=True)
            make_data(folder, n, size)
        return folder


def measure_sizes(bench: Bench, args: argparse.Namespace) -> None:
    """Train and attack, streamed, at every N (the attack on an untrained run with --untrained)."""
    for n in args.images:
        data = bench.data(n, args.size)
        run_dir = bench.work / f"run-{n}-{args.size}"
        if args.untrained:
            untrained_run(data, run_dir)
        elif "train" in args.skip:  # attack what an earlier run of this bench trained
            if not (run_dir / "model.safetensors").exists():
                raise SystemExit(f"--skip train: no trained run in {run_dir} (train it first)")
        else:
            bench.run(
                f"train {n}",
                f"train scratch, {n} images, streamed",
                train_command(data, run_dir),
                STREAM,
            )
        bench.run(
            f"attack {n}",
            f"attack pgd, {n} images, streamed",
            attack_command(run_dir, bench.work / f"pgd-{n}", args.attack_steps),
            STREAM,
        )


def measure_attack_nproc(bench: Bench, args: argparse.Namespace) -> None:
    """At the first N, the attack of ``measure_sizes`` in memory (what main did) and under
    ``--nproc 2`` with the default memory budget (each rank chooses for itself)."""
    first = args.images[0]
    run_dir = bench.work / f"run-{first}-{args.size}"
    bench.run(
        "attack memory",
        f"attack pgd, {first} images, in memory",
        attack_command(run_dir, bench.work / "pgd-memory", args.attack_steps),
        {"ROBUSTLAB_MEMORY_BUDGET": "1T"},
    )
    bench.run(
        "attack nproc",
        f"attack pgd, {first} images, --nproc 2",
        attack_command(run_dir, bench.work / "pgd-nproc", args.attack_steps, "--nproc", "2"),
        {},
    )


def measure_first(bench: Bench, args: argparse.Namespace) -> None:
    """At the first N: in memory (what main did), --nproc 2, and a tiny run (the fixed cost)."""
    first = args.images[0]
    data = bench.data(first, args.size)
    if "attack-nproc" not in args.skip:
        measure_attack_nproc(bench, args)
    if "memory" not in args.skip:
        bench.run(
            "train memory",
            f"train scratch, {first} images, in memory",
            train_command(data, bench.work / "run-memory"),
            {"ROBUSTLAB_MEMORY_BUDGET": "1T"},
        )
    if "nproc" not in args.skip:
        bench.run(
            "nproc",
            f"train scratch, {first} images, --nproc 2",
            train_command(data, bench.work / "run-nproc", "--nproc", "2"),
            STREAM,
        )
        tiny = bench.data(FIXED_COST_IMAGES, args.size)
        bench.run(
            "fixed",
            f"train scratch, {FIXED_COST_IMAGES} images (fixed cost)",
            train_command(tiny, bench.work / "run-fixed"),
            STREAM,
        )


def report(bench: Bench, args: argparse.Namespace) -> None:
    peaks, first, last = bench.peaks, args.images[0], args.images[-1]
    print()
    for kind in ("train", "attack"):
        if f"{kind} {last}" in peaks and last != first:
            ratio = peaks[f"{kind} {last}"] / peaks[f"{kind} {first}"]
            print(verdict(f"{kind} peak, {last} / {first} images", ratio, 1.2))
    for kind in ("train", "attack"):
        if f"{kind} {first}" in peaks and first == 12_000 and args.size == 224:
            gb = peaks[f"{kind} {first}"] / 1024
            print(verdict(f"{kind} peak at 12 000 x 224 px", gb, 3.0, unit=" GB"))
    if "train memory" in peaks and f"train {first}" in peaks:
        ratio = peaks[f"train {first}"] / peaks["train memory"]
        print(f"{'train streamed / in memory, ' + str(first) + ' images':<58} {ratio:5.2f}x")
    for base, label in (("attack memory", "in memory (main)"), (f"attack {first}", "streamed")):
        if "attack nproc" in peaks and base in peaks:
            ratio = peaks["attack nproc"] / peaks[base]
            print(verdict(f"attack --nproc 2 per rank / 1 process {label}", ratio, 0.6))
    if "nproc" in peaks and "train memory" in peaks:
        single = peaks["train memory"]
        print(
            verdict("--nproc 2 per rank / 1 process in memory (main)", peaks["nproc"] / single, 0.6)
        )
        # what is left once the cost of any robustlab process (torch, model, a tiny data set) is
        # taken off both: the part that grows with the data, which a rank must hold only a share of
        fixed = peaks["fixed"]
        if single - fixed > 0.1 * fixed:
            net = (peaks["nproc"] - fixed) / (single - fixed)
            print(verdict("  same, above the fixed cost of a process", net, 0.6))
        else:  # PSS varies by ~0.1 GB between runs: no data-driven part to compare
            print("  (the data set's pixels are under a tenth of a process's fixed cost)")
        if f"train {first}" in peaks:
            print(
                f"{'--nproc 2 per rank / 1 process, both streamed':<58} {peaks['nproc'] / peaks[f'train {first}']:5.2f}x"
            )


PRESETS = {  # --preset NAME: --images and --size
    "issue": (
        [12_000, 48_000],
        224,
    ),  # the figures (about 9 GB RAM, 9 GB disk, hours on 2 cores)
    "issue-12k": ([12_000], 224),  # 12 000 images at 224 px only: the 3 GB targets and --nproc
    "small": ([1_000, 4_000], 64),  # what a shared 2-core box measures in minutes
}
FIXED_COST_IMAGES = 64


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="sizes: " + ", ".join(f"{k} {v[0]} x {v[1]} px" for k, v in PRESETS.items()),
    )
    parser.add_argument(
        "--images", type=int, nargs="+", default=None, help="N per size (12000 48000)"
    )
    parser.add_argument("--size", type=int, default=None, help="image side in px (224)")
    parser.add_argument("--attack-steps", type=int, default=2, help="PGD steps (2)")
    parser.add_argument(
        "--untrained", action="store_true", help="attack untrained runs (no training)"
    )
    parser.add_argument("--throughput-images", type=int, default=2000, help="images (2000)")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds (2)")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["train", "memory", "nproc", "attack-nproc", "throughput"],
        help="train: attack the runs an earlier run trained in --workdir (their rows are left out)",
    )
    parser.add_argument("--workdir", type=Path, help="where the data and runs go (a temp dir)")
    args = parser.parse_args()
    images, size = PRESETS[args.preset or "issue"]
    args.images, args.size = args.images or images, args.size or size
    if args.untrained:
        args.skip = sorted({*args.skip, "memory", "nproc"})  # both measure training
    bench = Bench(Path(args.workdir or tempfile.mkdtemp(prefix="bench-data-scale-")))
    measure_sizes(bench, args)
    measure_first(bench, args)
    report(bench, args)
    if "throughput" not in args.skip:
        data = bench.data(args.images[0], args.size)
        streamed, memory = throughput(data, args.throughput_images, 64, args.rounds)
        print(
            f"tf_efficientnet_lite0 forward: streamed {streamed:.1f} img/s, in memory {memory:.1f} img/s"
        )
        print(verdict("  streamed / in memory", streamed / memory, 0.9, at_most=False))
    print(f"data and runs in {bench.work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
