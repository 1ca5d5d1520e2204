"""Peak memory of refused hostile inputs, next to the same command on a small valid input.

Each case runs ``python -m robustlab ...`` twice in child processes, side by side: once on a
hostile input that a budget refuses (an npz of zeros that inflates 100-fold, a YAML billion
laughs, an outlier label) and once on a small valid input of the same kind. It prints each
child's exit code and peak RSS (``wait4``) and the ratio hostile / valid (goal: <= 1.10, i.e.
refusing costs no more than a Python start, imports and a small read).

    .venv/bin/python benchmarks/bench_bounds.py [--inflate-mb 512]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

GOAL = 1.10
BILLION_LAUGHS = "study: leaf\na: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)


def peak_rss_mb(args: list[str], env: dict[str, str]) -> tuple[int, float]:
    """(exit code, peak RSS in MB) of one ``robustlab`` child."""
    child = subprocess.Popen(
        [sys.executable, "-m", "robustlab", *args],
        env={**os.environ, "ROBUSTLAB_TCMALLOC": "0", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(child.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024


def write_cases(folder: Path, inflate_mb: int) -> list[tuple[str, list[str], list[str], dict]]:
    """(name, hostile args, valid args, environment) per case."""
    zeros = np.zeros(((inflate_mb << 20) // 4096, 64, 64), dtype=np.uint8)
    np.savez_compressed(folder / "bomb.npz", images=zeros, labels=np.zeros(len(zeros), np.int64))
    small = zeros[:256]
    labels = np.arange(len(small)) % 2
    np.savez_compressed(folder / "small.npz", images=small, labels=labels)
    outlier = labels.copy()
    outlier[0] = 99_999
    np.savez_compressed(folder / "outlier.npz", images=small, labels=outlier)
    (folder / "bomb.yaml").write_text(BILLION_LAUGHS)
    (folder / "typo.yaml").write_text("study: leaf\ndataa: {name: digits}\n")
    budget = {"ROBUSTLAB_MAX_ARRAY_BYTES": str(64 << 20)}
    return [
        ("npz of zeros", ["data", "info", str(folder / "bomb.npz")],
         ["data", "info", str(folder / "small.npz")], budget),
        ("outlier label", ["data", "info", str(folder / "outlier.npz")],
         ["data", "info", str(folder / "small.npz")], {}),
        ("YAML billion laughs", ["run", str(folder / "bomb.yaml")],
         ["run", str(folder / "typo.yaml")], {}),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inflate-mb", type=int, default=512, help="decompressed npz size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = write_cases(Path(tmp), args.inflate_mb)
        print(f"{'case':22} {'exit':>4} {'hostile MB':>10} {'valid MB':>9} {'ratio':>6}")
        for name, hostile, valid, env in cases:
            code, rss_hostile = peak_rss_mb(hostile, env)
            _, rss_valid = peak_rss_mb(valid, env)
            ratio = rss_hostile / rss_valid
            verdict = "ok" if ratio <= GOAL and code == 2 else "OVER"
            print(
                f"{name:22} {code:>4} {rss_hostile:>10.0f} {rss_valid:>9.0f} {ratio:>6.2f} {verdict}"
            )


if __name__ == "__main__":
    main()
