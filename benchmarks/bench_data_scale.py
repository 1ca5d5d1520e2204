"""Memory and speed of the streaming data path at scale, on synthetic data it makes itself.

    .venv/bin/python benchmarks/bench_data_scale.py                      # issue 13's sizes
    .venv/bin/python benchmarks/bench_data_scale.py --images 3000 12000 --size 96   # small box

Writes ``images.npy`` + ``labels.npy`` folders of N uint8 RGB images (10 classes, a colour per
class plus noise) and measures, side by side in one run:

* peak memory of ``robustlab train --model simple-cnn --strategy scratch --epochs 1`` and of
  ``robustlab attack --attack pgd`` (test split, ``--no-adversarials``: the kept adversarials of
  every image are a result that grows with N by design) at each N, streamed (the default above
  the memory budget), and at the first N with everything in memory (``$ROBUSTLAB_MEMORY_BUDGET``
  = 1T, what main did): targets <= 3 GB at 12 000 x 224 px, largest N <= 1.2x the first;
* images/s of a full forward pass of ``tf_efficientnet_lite0`` over the train split, streamed
  from the uint8 file vs in-memory float tensors (target >= 0.9x);
* ``--nproc 2`` training: peak memory per rank vs the single process (target <= 0.6x).

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


def attack_command(run: Path, out: Path, steps: int) -> list[str]:
    return robustlab(
        "attack", str(run), "--attack", "pgd", "--eps", "8/255", "--steps", str(steps),
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[12_000, 48_000])
    parser.add_argument("--size", type=int, default=224, help="image side in px (224)")
    parser.add_argument("--attack-steps", type=int, default=2, help="PGD steps (2)")
    parser.add_argument("--throughput-images", type=int, default=2000, help="images (2000)")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds (2)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["memory", "nproc", "throughput"])
    parser.add_argument("--workdir", type=Path, help="where the data and runs go (a temp dir)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-data-scale-"))
    env = {**os.environ, "ROBUSTLAB_TCMALLOC": os.environ.get("ROBUSTLAB_TCMALLOC", "1")}
    rows: list[tuple[str, float, float]] = []

    def run(label: str, command: list[str], extra_env: dict[str, str] | None = None) -> float:
        peak, ranks, seconds = measure(command, {**env, **(extra_env or {})})
        rows.append((label, peak, seconds))
        print(f"{label:<44} peak {peak / 1024:6.2f} GB  {seconds:7.1f} s", flush=True)
        if ranks:
            print(f"{'  per rank':<44} " + ", ".join(f"{v / 1024:.2f} GB" for v in ranks.values()))
        return max(ranks.values()) if ranks else peak

    peaks: dict[str, float] = {}
    for n in args.images:
        data = work / f"data-{n}"
        if not (data / "labels.npy").exists():
            print(f"making {n} images at {args.size} px in {data} ...", flush=True)
            make_data(data, n, args.size)
        run_dir = work / f"run-{n}"
        peaks[f"train {n}"] = run(
            f"train scratch, {n} images, streamed", train_command(data, run_dir), STREAM
        )
        peaks[f"attack {n}"] = run(
            f"attack pgd, {n} images, streamed",
            attack_command(run_dir, work / f"pgd-{n}", args.attack_steps),
            STREAM,
        )
    first, last = args.images[0], args.images[-1]
    data = work / f"data-{first}"
    if "memory" not in args.skip:
        peaks["train memory"] = run(
            f"train scratch, {first} images, in memory",
            train_command(data, work / "run-memory"),
            {"ROBUSTLAB_MEMORY_BUDGET": "1T"},
        )
    if "nproc" not in args.skip:
        peaks["nproc"] = run(
            f"train scratch, {first} images, --nproc 2",
            train_command(data, work / "run-nproc", "--nproc", "2"),
            STREAM,
        )
    print()
    print(f"train  {last} / {first} images: {peaks[f'train {last}'] / peaks[f'train {first}']:.2f}x (<= 1.2)")
    print(f"attack {last} / {first} images: {peaks[f'attack {last}'] / peaks[f'attack {first}']:.2f}x (<= 1.2)")
    if "train memory" in peaks:
        print(f"train streamed / in memory, {first}: {peaks[f'train {first}'] / peaks['train memory']:.2f}x")
    if "nproc" in peaks:
        single = peaks[f"train {first}"]
        print(f"--nproc 2 per rank / 1 process, both streamed: {peaks['nproc'] / single:.2f}x")
        if "train memory" in peaks:
            ratio = peaks["nproc"] / peaks["train memory"]
            print(f"--nproc 2 per rank / 1 process in memory (main): {ratio:.2f}x (<= 0.6)")
    if "throughput" not in args.skip:
        streamed, memory = throughput(data, args.throughput_images, 64, args.rounds)
        print(
            f"tf_efficientnet_lite0 forward: streamed {streamed:.1f} img/s, in memory "
            f"{memory:.1f} img/s: {streamed / memory:.2f}x (>= 0.9)"
        )
    print(f"data and runs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
