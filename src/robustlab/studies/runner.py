"""A resumable runner for a study: an ordered list of small steps, each done at most once.

Run directory layout::

    RUN_DIR/
      config.json, config.yaml   the resolved config (a rerun must match it)
      <step>/                    one folder per step: its outputs, written atomically, then
      <step>/done.json           the done-marker holding the step's result (JSON) and timings
      results.json               every step's result (and, apart, the timings)
      report.html                rendered from results.json and the step folders

A killed run continues where it stopped: finished steps (those with a done-marker) are
skipped and their recorded results reused; the interrupted step runs again from the start
(training steps resume from their last finished epoch through ``train_run``'s own state).
Every step starts from a seed derived from the config's seed and the step's name, so a
resumed run ends with the same results as an uninterrupted one.

Under torchrun (``robustlab --nproc N run``) every rank runs every recorded step, so the work
inside that is sharded (DDP training, attack sweeps) is shared, and rank 0 is the one writer:
it alone prepares the run directory, decides which steps are done, writes the done-markers and
runs the unrecorded steps (results.json, the report); every rank continues with rank 0's
recorded result. A step on another rank gets a private scratch folder as ``ctx.dir``, removed
after the step, so a step that writes only into ``ctx.dir`` (and reads earlier steps through
``ctx.step_dir``, which rank 0 completed before any rank moved on) needs no rank guard.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustlab import distributed
from robustlab.errors import UserError, first_difference
from robustlab.io import read_json, remove_stale_temporaries, write_json, write_text
from robustlab.outdir import LOCK_FILE, is_empty_output
from robustlab.studies.config import dump_yaml

log = logging.getLogger(__name__)

FORMAT = "robustlab-study"
DONE = "done.json"
RESULTS = "results.json"


EpochObserver = Callable[[str, dict[str, Any]], None]


@dataclass
class StepContext:
    """What a step function gets: its folder, earlier results and a per-run object cache."""

    run_dir: Path
    # this step's own output folder (exists; the run dir for unrecorded steps); under torchrun
    # a private scratch folder on ranks > 0, so write here and nowhere else
    dir: Path
    step: str
    results: Mapping[str, Any]  # results of the steps before this one, by step name
    seed: int  # this step's seed (already applied to torch)
    timings: Mapping[str, Any] = field(default_factory=dict)  # seconds and memory of those steps
    data_dir: Path | None = None
    progress: bool = False
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the steps of one process
    device: str = "cpu"  # where models and the tensors they take live (robustlab run --device)
    on_epoch: EpochObserver | None = None  # (step, epoch record): live tracking of training

    def epoch_callback(self) -> Callable[[dict[str, Any]], None] | None:
        """What a training step hands ``fit(on_epoch=...)``: its epochs, named by the step."""
        on_epoch = self.on_epoch
        if on_epoch is None:
            return None
        return lambda record: on_epoch(self.step, record)

    def step_dir(self, name: str) -> Path:
        """The output folder of another step (earlier steps' outputs are read from here)."""
        return self.run_dir / name


StepFunction = Callable[[StepContext], Mapping[str, Any]]


@dataclass(frozen=True)
class Work:
    """What a step computes, in units that cost alike across the steps of one ``kind``.

    ``kind`` is ``"<what> <architecture>"``: ``train`` counts image passes (forward + backward)
    and ``attack`` input-gradient passes per image, both scaled to 96x96 pixels. The runner
    times each finished step and estimates the next ones of the same kind from that rate.
    """

    kind: str
    units: float

    @property
    def what(self) -> str:
        return self.kind.split(" ", 1)[0]


# Seconds per unit (2 CPU cores) for a kind of work before any step of it has been timed in
# this run directory; once one has, its measured rate replaces these.
PRIOR_SECONDS_PER_UNIT = {"train": 6e-3, "attack": 4e-3}


@dataclass(frozen=True)
class Step:
    """One unit of a study. ``run`` returns a JSON-able result; ``work`` feeds the ETA."""

    name: str  # unique; also the folder name
    title: str  # shown in progress lines, e.g. "train finetune"
    run: StepFunction
    expected_seconds: float = 5.0  # the estimate of a step without ``work`` (loading, report)
    # False: no done-marker, runs every time, writes into the run dir itself (e.g. the report);
    # under torchrun rank 0 alone runs it, so it must not use collectives
    record: bool = True
    work: Work | None = None


class CostModel:
    """Seconds per unit of work by kind, measured on the finished steps of a run directory."""

    def __init__(self) -> None:
        self.measured: dict[str, tuple[float, float]] = {}  # kind -> (seconds, units) so far
        self.expected_done = self.actual_done = 0.0  # guessed vs taken, steps without a rate

    def add(self, work: Mapping[str, Any] | None, seconds: float, guessed: float | None) -> None:
        """Record a finished step: its work (as recorded) and how long it took."""
        if work is not None and work["units"] > 0:
            done, units = self.measured.get(work["kind"], (0.0, 0.0))
            self.measured[work["kind"]] = (done + seconds, units + work["units"])
        if guessed is not None:  # calibrates the guesses for kinds not measured yet
            self.expected_done += guessed
            self.actual_done += seconds

    def estimate(self, step: Step) -> float:
        """Seconds ``step`` should take: measured rate x units, else a calibrated guess."""
        if step.work is not None and step.work.kind in self.measured:
            seconds, units = self.measured[step.work.kind]
            return step.work.units * seconds / units
        return self.guess(step) * (
            self.actual_done / self.expected_done if self.expected_done > 0 else 1.0
        )

    @staticmethod
    def guess(step: Step) -> float:
        if step.work is None or step.work.what not in PRIOR_SECONDS_PER_UNIT:
            return step.expected_seconds
        return step.work.units * PRIOR_SECONDS_PER_UNIT[step.work.what]


StepObserver = Callable[[str, Step, int, int], None]  # (event "start"|"done"|"skip", step, i, n)


def step_seed(seed: int, name: str) -> int:
    """A seed per (config seed, step name), stable across processes and Python versions."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux


def prepare_run_dir(run_dir: Path, config: Mapping[str, Any], *, restart: bool = False) -> None:
    """Create ``run_dir`` for ``config``, or check that an existing one holds the same config.

    restart: discard an existing study run in ``run_dir`` first (never an unrelated folder).
    Under torchrun rank 0 alone does it; a refusal is raised on every rank.
    """
    distributed.on_main(lambda: _prepare_run_dir(run_dir, config, restart))


def _prepare_run_dir(run_dir: Path, config: Mapping[str, Any], restart: bool) -> None:
    recorded = run_dir / "config.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a directory")
    if restart and recorded.exists():
        _check_is_study_dir(run_dir)
        log.info("--restart: removing the previous run in %s", run_dir)
        _empty_folder(run_dir)
    if recorded.exists():
        _check_is_study_dir(run_dir)
        previous = read_json(recorded, "run config").get("config")
        if previous != config:
            raise UserError(
                f"{run_dir} holds a run of a different config ({first_difference(previous, config)}); "
                "use --out DIR for a new run, or --restart to discard the old one"
            )
        for folder in (run_dir, *(p for p in run_dir.rglob("*") if p.is_dir())):
            remove_stale_temporaries(folder)  # writes a kill interrupted
        return
    if not is_empty_output(run_dir):
        raise UserError(
            f"--out {run_dir} is not empty and holds no study run; choose another --out"
        )
    write_json(recorded, {"format": FORMAT, "format_version": 1, "config": dict(config)})
    write_text(run_dir / "config.yaml", dump_yaml(config))


def _empty_folder(run_dir: Path) -> None:
    """Remove everything in ``run_dir`` but its lock file (held by this process)."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _check_is_study_dir(run_dir: Path) -> None:
    recorded = read_json(run_dir / "config.json", "run config")
    if not isinstance(recorded, dict) or recorded.get("format") != FORMAT:
        raise UserError(f"{run_dir} is not a robustlab study run (config.json has another format)")


def load_done(run_dir: Path, step: str) -> dict[str, Any] | None:
    """The done-marker of ``step`` ({"result", "seconds", ...}) or None if it has not finished."""
    path = run_dir / step / DONE
    if not path.exists():
        return None
    marker = read_json(path, f"done-marker of step '{step}'")
    if not isinstance(marker, dict) or "result" not in marker:
        raise UserError(f"{path} is corrupt; delete it to run step '{step}' again")
    return marker


def _marker(result: dict[str, Any], seconds: float, work: Work | None) -> dict[str, Any]:
    """A step's done-marker: its result, time, memory so far and work (for later estimates)."""
    marker = {
        "result": result,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if work is not None:
        marker["work"] = {"kind": work.kind, "units": work.units}
    return marker


def _context(
    run_dir: Path,
    step: Step,
    folder: Path,
    seed: int,
    results: Mapping[str, Any],
    timings: Mapping[str, Any],
    options: Mapping[str, Any],
    cache: dict[str, Any],
) -> StepContext:
    """The context of ``step`` writing into ``folder`` (made here), the global RNGs seeded."""
    folder.mkdir(parents=True, exist_ok=True)
    this_seed = step_seed(seed, step.name)
    _seed_everything(this_seed)
    data_dir = options["data_dir"]
    return StepContext(
        run_dir=run_dir,
        dir=folder,
        step=step.name,
        results=dict(results),
        seed=this_seed,
        timings=dict(timings),
        data_dir=Path(data_dir) if data_dir is not None else None,
        progress=options["progress"],
        cache=cache,
        device=options["device"],
        on_epoch=options["on_epoch"],
    )


@contextlib.contextmanager
def _scratch_root() -> Iterator[Path | None]:
    """None on rank 0 (it writes into the run dir); on the other ranks a private temporary
    folder for their steps' own outputs, removed at the end."""
    if distributed.is_main():
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=f"robustlab-rank{distributed.rank()}-") as folder:
        yield Path(folder)


def _step_folder(run_dir: Path, step: Step, scratch: Path | None) -> Path:
    base = run_dir if scratch is None else scratch
    return base / step.name if step.record else base


def _run_step(step: Step, context: StepContext) -> dict[str, Any]:
    """Run ``step`` and record it; the done-marker as rank 0 wrote it, on every rank.

    A recorded step runs on every rank (its collectives must meet); rank 0 writes its marker and
    reads it back, so a fresh run and a resumed one pass identical (JSON) values on.
    """

    def finish(result: Mapping[str, Any], seconds: float) -> dict[str, Any]:
        marker = _marker(dict(result), seconds, step.work)
        if not step.record:
            return marker
        write_json(context.dir / DONE, marker)
        return read_json(context.dir / DONE)

    def timed() -> dict[str, Any]:
        start = time.perf_counter()
        result = step.run(context)
        return finish(result, time.perf_counter() - start)

    if not step.record:
        return distributed.on_main(timed)
    start = time.perf_counter()
    result = step.run(context)
    seconds = time.perf_counter() - start
    return distributed.on_main(lambda: finish(result, seconds))


def _announce(
    steps: Sequence[Step], index: int, costs: CostModel, results: Mapping[str, Any]
) -> None:
    """Log step ``index`` (1-based) starting, with the estimated time left for the run."""
    left = sum(costs.estimate(s) for s in steps[index - 1 :] if s.name not in results)
    title = steps[index - 1].title
    log.info("[%d/%d] %s ... (about %s left)", index, len(steps), title, format_seconds(left))


def run_steps(
    run_dir: str | Path,
    steps: Sequence[Step],
    *,
    seed: int = 0,
    data_dir: str | Path | None = None,
    progress: bool = False,
    observer: StepObserver | None = None,
    device: str = "cpu",
    on_epoch: EpochObserver | None = None,
) -> dict[str, Any]:
    """Run every unfinished step of ``steps`` in order; return ``{"steps", "timings"}``.

    The run directory must already be prepared (``prepare_run_dir``). A step's result is
    recorded in its done-marker only after the step function returned, so a step killed
    midway runs again (from its own saved state, if it keeps one) on the next call.
    Under torchrun every rank returns rank 0's results (see the module docstring).
    """
    run_dir = Path(run_dir)
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"step names must be unique, got {names}")
    options = {"data_dir": data_dir, "progress": progress, "device": device, "on_epoch": on_epoch}
    results: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    costs = CostModel()
    total = len(steps)
    with _scratch_root() as scratch:
        for index, step in enumerate(steps, start=1):
            marker = distributed.on_main(
                lambda step=step: load_done(run_dir, step.name) if step.record else None
            )
            event = "skip"
            if marker is not None:
                costs.add(marker.get("work"), marker.get("seconds", 0.0), None)
                log.info("[%d/%d] %s: done (recorded)", index, total, step.title)
            else:
                _announce(steps, index, costs, results)
                if observer:
                    observer("start", step, index, total)
                measured = step.work is not None and step.work.kind in costs.measured
                guessed = None if measured else costs.guess(step)
                folder = _step_folder(run_dir, step, scratch)
                context = _context(run_dir, step, folder, seed, results, timings, options, cache)
                marker = _run_step(step, context)
                if scratch is not None and step.record:
                    shutil.rmtree(folder, ignore_errors=True)
                costs.add(marker.get("work"), marker["seconds"], guessed)
                took = format_seconds(marker["seconds"])
                log.info("[%d/%d] %s: done in %s", index, total, step.title, took)
                event = "done"
            results[step.name] = marker["result"]
            timings[step.name] = {k: v for k, v in marker.items() if k != "result"}
            if observer:
                observer(event, step, index, total)
    return {"steps": results, "timings": timings}
