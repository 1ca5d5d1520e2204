"""Per-step wall time and peak memory (RSS) of the leaf study, run from scratch in this process.

    .venv/bin/python benchmarks/bench_leaf_study.py                 # the full preset
    .venv/bin/python benchmarks/bench_leaf_study.py --set data.limit=600 --set models.*.epochs=1

Every run starts from an empty run directory (a temporary one unless --out is given, which is
then restarted), so the figures are rerunnable. RSS is sampled every 50 ms by a thread while each
step runs. Targets: the whole study <= 10 minutes on 2 cores, peak RSS <= 4 GB, and the source's
result shape at eps = 0.03. With tcmalloc installed the script re-executes itself with it
preloaded (as scripts/setup.sh does for every robustlab process); --no-tcmalloc measures glibc.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from robustlab.allocator import allocator_name, reexec_with_tcmalloc

TARGET_SECONDS = 600.0
TARGET_RSS_MB = 4096.0


class RssSampler:
    """Peak RSS of this process per step, sampled by a background thread."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0.0
        self.rows: list[dict] = []
        self.started = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss / 2**20)
            time.sleep(self.interval)

    def __call__(self, event: str, step, index: int, total: int) -> None:
        if event == "start":
            self.peak = self.process.memory_info().rss / 2**20
            self.started = time.perf_counter()
        elif event == "done":
            self.peak = max(self.peak, self.process.memory_info().rss / 2**20)
            seconds = time.perf_counter() - self.started
            self.rows.append({"step": step.name, "seconds": seconds, "peak_rss_mb": self.peak})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--out", type=Path, default=None, help="run dir (restarted); default a temp dir"
    )
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--no-tcmalloc", action="store_true", help="do not preload tcmalloc")
    args = parser.parse_args()

    # As `robustlab run` does: passive OpenMP waiting (see robustlab.cli.run).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not args.no_tcmalloc:
        reexec_with_tcmalloc(sys.argv)

    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from robustlab.studies import load_study, resolve_data, run_study

    start = time.perf_counter()
    study = resolve_data(load_study("leaf", args.overrides), args.data_dir)
    sampler = RssSampler()
    with tempfile.TemporaryDirectory(prefix="bench-leaf-") as tmp:
        out = args.out or Path(tmp) / "leaf"
        results = run_study(study, out, data_dir=args.data_dir, restart=True, observer=sampler)
    total = time.perf_counter() - start
    sampler.stop.set()

    print(
        f"\nleaf study on {study.config.data.name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, allocator "
        f"{allocator_name()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'step':28s} {'seconds':>9s} {'peak RSS MB':>12s}")
    for row in sampler.rows:
        print(f"{row['step']:28s} {row['seconds']:9.1f} {row['peak_rss_mb']:12.0f}")
    peak = max(row["peak_rss_mb"] for row in sampler.rows)
    print(f"{'total (with imports, data)':28s} {total:9.1f} {peak:12.0f}")
    shape = results["steps"].get("shape-check", {})
    print(
        f"\ntime  <= {TARGET_SECONDS:.0f} s: {'yes' if total <= TARGET_SECONDS else 'NO'} ({total:.0f} s)"
    )
    print(
        f"RSS   <= {TARGET_RSS_MB:.0f} MB: {'yes' if peak <= TARGET_RSS_MB else 'NO'} ({peak:.0f} MB)"
    )
    if shape:
        print(
            f"shape at eps {shape['eps']:g}: clean {shape['clean']:.3f}, white-box {shape['white_box']:.3f}, "
            f"black-box {shape['black_box']:.3f}, noise {shape['noise']:.3f} -> "
            f"white far below black {shape['white_far_below_black']}, black below noise "
            f"{shape['black_below_noise']}, noise within 3 pp of clean {shape['noise_within_3pp_of_clean']}"
        )
    for name, result in results["steps"].items():
        if name.startswith("train-"):
            print(f"{name:28s} test accuracy {result['test_accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
