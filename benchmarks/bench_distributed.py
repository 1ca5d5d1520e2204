"""Speed-up of torchrun scale-out on this machine: N processes x 1 thread vs 1 process x N threads.

    .venv/bin/python benchmarks/bench_distributed.py [--nproc 2] [--rounds 3] [--size 16]

Two workloads, each timed inside the workers after imports and data loading:

* evaluation: a PGD sweep (10 steps, 2 epsilons) over the 1,257 digits of the train split,
  sharded by ``robustlab.distributed.map_chunks`` (bit-identical to one process);
* training: ``fit`` of small-cnn from scratch, 2 epochs (DDP when N > 1).

Configurations, measured side by side in each round (order alternates, so a machine shared
with other jobs slows all alike; the median round is reported):

* ``1p x 1t``: one process, one thread (the reference);
* ``1p x Nt``: one process, N intra-op threads;
* ``Np x 1t``: N processes under torch.distributed.run (gloo), one thread each.

Prints seconds per configuration and the ratios ``(1p x Nt) / (Np x 1t)`` (> 1: processes beat
threads) and ``(1p x 1t) / (Np x 1t)`` (the speed-up of N processes over one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def work(size: int) -> dict[str, float]:
    """Run both workloads in this process (one rank of many, or alone); seconds each."""
    import torch

    from robustlab import distributed
    from robustlab.attacks import get_attack, sweep
    from robustlab.data import DataSpec, load_splits
    from robustlab.models import ModelSpec, create_model
    from robustlab.training import TrainConfig, fit

    splits = load_splits(DataSpec("digits", image_size=size))
    spec = ModelSpec(arch="small-cnn", num_classes=10, in_chans=1, input_size=size)
    torch.manual_seed(0)
    model = create_model(spec).eval()
    attack = get_attack("pgd", eps=0.1, steps=10)
    x, y = splits.train.images, splits.train.labels

    def chunk(part: slice) -> torch.Tensor:
        return sweep(attack, model, x[part], y[part], [0.05, 0.1], keep_adversarials=False).correct

    train, val = (splits.train.images, splits.train.labels), (splits.val.images, splits.val.labels)
    config = TrainConfig(strategy="scratch", optimizer="adam", lr=3e-3, epochs=2, batch_size=64)
    # warm-up: the first optimiser and DDP wrapper import torch._dynamo & co. (seconds)
    warm = dataclasses.replace(config, epochs=1)
    fit(create_model(spec), (train[0][:128], train[1][:128]), val, warm, progress=False)
    chunk(slice(0, 32))

    timings = {}
    distributed.barrier()
    start = time.perf_counter()
    distributed.map_chunks(chunk, len(y), 32)
    distributed.barrier()
    timings["evaluation"] = time.perf_counter() - start

    torch.manual_seed(0)
    learner = create_model(spec)
    distributed.barrier()
    start = time.perf_counter()
    fit(learner, train, val, config, progress=False)
    distributed.barrier()
    timings["training"] = time.perf_counter() - start
    return timings


def worker(out: Path, size: int) -> None:
    from robustlab import distributed

    distributed.init_from_env()
    timings = work(size)
    if distributed.is_main():
        out.write_text(json.dumps(timings))
    distributed.shutdown()


def measure(nproc: int, threads: int, size: int) -> dict[str, float]:
    """Start a fresh worker configuration and return its timings."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "timings.json"
        me = [str(Path(__file__).resolve()), "--worker", str(out), "--size", str(size)]
        if nproc > 1:
            launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
            command = [sys.executable, *launch, *me]
        else:
            command = [sys.executable, *me]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes (and threads) N")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=16, help="digits resized to this side")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.size)
        return

    n = args.nproc
    configs = {"1p x 1t": (1, 1), f"1p x {n}t": (1, n), f"{n}p x 1t": (n, 1)}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for round_ in range(args.rounds):
        names = list(configs) if round_ % 2 == 0 else list(reversed(configs))
        for name in names:
            runs[name].append(measure(*configs[name], args.size))
    print(f"{os.cpu_count()} CPUs, digits at {args.size}px, median of {args.rounds} rounds")
    print(
        f"{'workload':<11}"
        + "".join(f"{name:>11}" for name in configs)
        + f"{'threads/procs':>15}{'1p1t/procs':>12}"
    )
    for workload in ("evaluation", "training"):
        med = {name: statistics.median(r[workload] for r in runs[name]) for name in configs}
        procs = med[f"{n}p x 1t"]
        print(
            f"{workload:<11}"
            + "".join(f"{med[name]:>10.2f}s" for name in configs)
            + f"{med[f'1p x {n}t'] / procs:>15.2f}{med['1p x 1t'] / procs:>12.2f}"
        )


if __name__ == "__main__":
    main()
