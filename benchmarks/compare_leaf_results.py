"""Compare a study's results.json with a baseline, digit for digit.

    .venv/bin/python benchmarks/compare_leaf_results.py /tmp/leaf-ds /work/notes/leaf_baseline

Each argument is a study run directory or a results.json. Every number, string and list must
be equal (floats compared by their exact repr); only what depends on the clock or on where the
run lives is ignored: keys named in ``VOLATILE`` (timings, paths, versions). Prints one line per
difference and exits 1 if there is any, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# clock- and location-dependent keys: everything else must match exactly
VOLATILE = {
    "seconds",
    "seconds_per_image",
    "timings",
    "time",
    "elapsed",
    "started",
    "finished",
    "run_dir",
    "out",
    "path",
    "paths",
    "source",
    "robustlab_version",
    "report",
    "peak_rss_mb",
}


def _load(path: Path) -> Any:
    file = path / "results.json" if path.is_dir() else path
    return json.loads(file.read_text(encoding="utf-8"))


def differences(new: Any, old: Any, where: str = "") -> list[str]:
    """Every place where ``new`` and ``old`` differ, as ``path: new != old`` lines."""
    if isinstance(new, dict) and isinstance(old, dict):
        found = []
        for key in sorted(set(new) | set(old), key=str):
            if key in VOLATILE:
                continue
            if key not in new or key not in old:
                side = "baseline only" if key not in new else "new only"
                found.append(f"{where}/{key}: {side}")
                continue
            found.extend(differences(new[key], old[key], f"{where}/{key}"))
        return found
    if isinstance(new, list) and isinstance(old, list):
        if len(new) != len(old):
            return [f"{where}: {len(new)} items != {len(old)} items"]
        found = []
        for index, (a, b) in enumerate(zip(new, old, strict=True)):
            found.extend(differences(a, b, f"{where}[{index}]"))
        return found
    # repr compares floats to the last digit and keeps 1 != 1.0 != True apart
    if type(new) is not type(old) or repr(new) != repr(old):
        return [f"{where or '/'}: {new!r} != {old!r}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new", type=Path, help="run directory or results.json to check")
    parser.add_argument("baseline", type=Path, help="run directory or results.json of the baseline")
    args = parser.parse_args(argv)
    found = differences(_load(args.new), _load(args.baseline))
    for line in found:
        print(line)
    print(f"{len(found)} difference(s)" if found else "identical (volatile keys ignored)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
