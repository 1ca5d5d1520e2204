"""OpenMP wait policy beside a busy job: a 1-epoch training, spinning vs passive threads.

Every robustlab command sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads (unless the user
set it). This measures why: the same ``robustlab train`` (small-cnn, 1 epoch) run as a child
process with ``OMP_WAIT_POLICY=ACTIVE`` and ``PASSIVE``, interleaved, while one other process
keeps a core busy with matrix products. Prints the wall time of each run, the median per
policy and the ratio ACTIVE / PASSIVE (above 1: passive waiting is faster).

Run: ``.venv/bin/python benchmarks/bench_omp_wait.py`` (a few minutes on 2 cores),
``--quick`` for a tiny run, ``--no-busy`` for an idle machine as the baseline.

Measured (2 cores shared with other jobs, load average ~13, ``--limit 3000 --rounds 2
--threads 2``): median ACTIVE 302.8 s, PASSIVE 123.3 s, ratio 2.46.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY = (
    "import torch; torch.set_num_threads(1); a = torch.randn(512, 512)\n"
    "while True: a = (a @ a).clamp_(-1, 1)"
)


def train_seconds(policy: str, args: argparse.Namespace, out: Path) -> float:
    """Wall time of one ``robustlab train`` child under ``OMP_WAIT_POLICY=policy``."""
    env = dict(os.environ, OMP_WAIT_POLICY=policy, OMP_NUM_THREADS=str(args.threads))
    command = [
        sys.executable, "-m", "robustlab", "train", "--data", args.data, "--limit", str(args.limit),
        "--model", "small-cnn", "--strategy", "scratch", "--optimizer", "adam", "--lr", "3e-3",
        "--epochs", "1", "--out", str(out), "--overwrite",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist", help="data set (fashion-mnist)")
    parser.add_argument("--limit", type=int, default=6000, help="images (6000)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads")
    parser.add_argument("--rounds", type=int, default=3, help="runs per policy, interleaved")
    parser.add_argument("--no-busy", action="store_true", help="no busy job beside the runs")
    parser.add_argument("--quick", action="store_true", help="600 images, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.limit, args.rounds = 600, 1
    times: dict[str, list[float]] = {"ACTIVE": [], "PASSIVE": []}
    busy = None if args.no_busy else subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        with tempfile.TemporaryDirectory(prefix="bench-omp-") as folder:
            for round_ in range(args.rounds):
                for policy in times:
                    seconds = train_seconds(policy, args, Path(folder) / policy)
                    times[policy].append(seconds)
                    print(f"round {round_ + 1} {policy:7s} {seconds:7.1f} s", flush=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    active, passive = (statistics.median(times[p]) for p in ("ACTIVE", "PASSIVE"))
    beside = "alone" if args.no_busy else "beside one busy process"
    print(
        f"1-epoch small-cnn on {args.limit} {args.data} images, {args.threads} threads, {beside}: "
        f"median ACTIVE {active:.1f} s, PASSIVE {passive:.1f} s, ratio {active / passive:.2f}"
    )


if __name__ == "__main__":
    main()
