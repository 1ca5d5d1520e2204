"""Scale-out on torchrun: process-group setup, sharding by whole chunks, in-order gathering.

Under ``torchrun --nproc-per-node N -m robustlab ...`` (or ``robustlab --nproc N ...``, which
re-launches itself that way) every process runs the same command. Work is split by whole
*chunks* (the batches a single process would use, same boundaries), each rank takes a
contiguous block of them, and any randomness inside a chunk is seeded from
``(seed, chunk index)`` instead of a global stream. So a sample's result never depends on which
process computed it, and gathering the chunks back in order gives the single-process result bit
for bit. Only rank 0 writes files.

Outside torchrun (no ``WORLD_SIZE`` in the environment) every helper is the single-process
no-op, so library code calls them unconditionally::

    results = map_chunks(lambda part: evaluate(x[part], y[part]), len(x), batch_size, seed=0)

Resume: give ``map_chunks`` a ``ChunkStore`` and every finished chunk is saved (atomically, by
the rank that computed it); the same call after a kill loads the finished chunks and computes
only the rest, so the result equals that of an uninterrupted run.

Backends: ``gloo`` for CPU tensors; with CUDA, ``cpu:gloo,cuda:nccl`` (each collective goes to
the backend of its tensors' device). ``$ROBUSTLAB_DIST_BACKEND`` overrides the choice.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from robustlab.budgets import check_budget
from robustlab.errors import UserError
from robustlab.io import remove_stale_temporaries, write_bytes, write_text

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_BACKEND = "ROBUSTLAB_DIST_BACKEND"
# Set by ``launch`` for its children: a folder where a rank leaves its UserError message, so the
# launcher prints it once instead of N copies and torchrun's failure report.
ENV_ERROR_DIR = "ROBUSTLAB_DIST_ERROR_DIR"
# Collectives wait this long for a slow rank (a rank training a big chunk, rank 0 writing files).
TIMEOUT = datetime.timedelta(hours=2)


def under_torchrun() -> bool:
    """True in a process started by torchrun (it sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes in the environment; return whether we did.

    A no-op (returns False) outside torchrun or when torchrun started a single process.
    ``backend``: None picks ``gloo`` on CPU-only machines and ``cpu:gloo,cuda:nccl`` with CUDA.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed; run without torchrun/--nproc")
    backend = backend or os.environ.get(ENV_BACKEND) or _default_backend()
    if "nccl" in backend:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=TIMEOUT)
    faulthandler.enable()  # a rank killed by a signal (an abort in C++) shows its Python stack
    log.debug("rank %d/%d joined the process group (%s)", rank(), world_size(), backend)
    return True


def _default_backend() -> str:
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def shutdown() -> None:
    """Leave the process group (at the end of a command), if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_rank(code: int) -> NoReturn:
    """End a torchrun rank with ``code`` once its work is written, skipping interpreter teardown.

    Gloo's C++ threads can still be alive when the interpreter finalizes (a Work object or a
    DDP reducer keeps the group alive past ``destroy_process_group``); destroying them then
    aborts the rank ("terminate called without an active exception") after every output was
    written, and torchrun reports the whole run as failed. Every file is written atomically
    and every context manager has closed by now, so nothing is lost by leaving at once.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def is_distributed() -> bool:
    """True when a process group of more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's index in ``[0, world_size())``; 0 outside torchrun."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes sharing the work; 1 outside torchrun."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its own machine (selects its GPU)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the one process (rank 0) that logs results and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (a no-op for one process).

    A tiny all-reduce on a CPU tensor rather than ``dist.barrier()``: it always goes to gloo,
    even in a mixed ``cpu:gloo,cuda:nccl`` group.
    """
    if is_distributed():
        dist.all_reduce(torch.zeros(1))


# ---------------------------------------------------------------- sharding


def chunk_slices(n_items: int, chunk_size: int) -> list[slice]:
    """Every chunk of ``range(n_items)`` in order: ``chunk_size`` items each, the last shorter."""
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [slice(s, min(s + chunk_size, n_items)) for s in range(0, n_items, chunk_size)]


def chunk_block(n_chunks: int, rank_: int, world: int) -> range:
    """The contiguous, balanced block of chunk indices rank ``rank_`` of ``world`` takes."""
    return range(n_chunks * rank_ // world, n_chunks * (rank_ + 1) // world)


def shard_chunks(
    n_items: int, chunk_size: int, *, rank_: int | None = None, world: int | None = None
) -> list[slice]:
    """This rank's chunks of ``range(n_items)``, as item slices with single-process boundaries.

    Chunk ``k`` is ``slice(k * chunk_size, ...)`` whichever rank runs it (its index is
    ``part.start // chunk_size``); the ranks' blocks are disjoint and cover every chunk.
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    chunks = chunk_slices(n_items, chunk_size)
    return [chunks[k] for k in chunk_block(len(chunks), rank_, world)]


def chunk_seed(seed: int, index: int) -> int:
    """A seed for chunk ``index`` of a computation seeded with ``seed`` (stable everywhere)."""
    return (int(seed) * 1_000_003 + int(index) * 7_919 + 12_345) % (2**63 - 1)


@contextlib.contextmanager
def seeded(seed: int | None, index: int) -> Iterator[None]:
    """Seed the global RNGs from ``(seed, index)`` inside the block, restoring them after.

    Restoring keeps the caller's own random stream independent of how many chunks ran here.
    ``seed=None`` leaves the RNGs alone.
    """
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(chunk_seed(seed, index))
        yield


def gather_in_order(local: Mapping[int, T]) -> list[T]:
    """Gather every rank's ``{chunk index: result}`` and return all results by chunk index.

    Every rank gets the full list. Raises if a chunk is missing or came from two ranks. Results
    travel pickled (``all_gather_object``), so tensors should be on the CPU.
    """
    if is_distributed():
        parts: list[Any] = [None] * world_size()
        dist.all_gather_object(parts, dict(local))
    else:
        parts = [dict(local)]
    merged: dict[int, T] = {}
    for part in parts:
        for index, value in part.items():
            if index in merged:
                raise RuntimeError(f"chunk {index} was computed by two ranks")
            merged[index] = value
    if sorted(merged) != list(range(len(merged))):
        missing = sorted(set(range(max(merged, default=-1) + 1)) - set(merged))
        raise RuntimeError(f"chunks {missing[:5]} are missing from the gathered results")
    return [merged[index] for index in range(len(merged))]


class ChunkStore:
    """Finished chunks of one computation, saved so that a killed run can skip them.

    ``folder/chunk-000012.pt`` holds chunk 12's result with the computation's ``fingerprint``
    (any JSON-able description of it: settings, data, model); a file whose fingerprint differs
    (the command changed) or that cannot be read is ignored and the chunk computed again.
    Results must be tensors, numbers, strings, None, or lists/tuples/dicts of them: they are
    read back with ``torch.load(weights_only=True)``, so a planted file cannot run code.
    """

    def __init__(self, folder: str | os.PathLike[str], fingerprint: Any) -> None:
        self.folder = Path(folder)
        self.fingerprint = json.dumps(fingerprint, sort_keys=True, default=str)

    def path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:06d}.pt"

    def load(self, index: int) -> Any | None:
        """Chunk ``index``'s saved result, or None when it must be computed."""
        path = self.path(index)
        # a kill mid-save leaves a temporary file: only this rank writes this chunk, so it is stale
        remove_stale_temporaries(self.folder, path.name)
        if not path.exists():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            log.warning("ignoring unreadable chunk file %s (%s)", path, error)
            return None
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint:
            log.warning("ignoring %s: it was computed with other settings", path)
            return None
        return saved["result"]

    def save(self, index: int, result: Any) -> None:
        buffer = io.BytesIO()
        torch.save({"fingerprint": self.fingerprint, "result": result}, buffer)
        write_bytes(self.path(index), buffer.getvalue())

    def clear(self) -> None:
        """Remove the folder once the final results are written (rank 0, after a barrier)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def map_chunks(
    fn: Callable[[slice], T],
    n_items: int,
    chunk_size: int,
    *,
    seed: int | None = None,
    store: ChunkStore | None = None,
    progress: str | None = None,
) -> list[T]:
    """Run ``fn(part)`` on every chunk of ``range(n_items)``, sharded over ranks; in order.

    Each rank runs its own block of chunks (``shard_chunks``), each under ``seeded(seed,
    chunk index)``, then the results are gathered: every rank returns the full, ordered list,
    identical to what one process computes alone. ``fn`` should return CPU tensors.
    ``store``: save each finished chunk there, and reuse the chunks already saved (resume);
    ``fn`` must then not return None (None means "not saved").
    ``progress``: the label of a progress bar over this rank's chunks (rank 0 only).
    """
    local: dict[int, T] = {}
    reused = 0
    parts = shard_chunks(n_items, chunk_size)
    bar = tqdm(parts, desc=progress, unit="chunk", disable=progress is None or not is_main())
    for part in bar:
        index = part.start // chunk_size
        result = store.load(index) if store is not None else None
        if result is not None:
            reused += 1
        else:
            with seeded(seed, index):
                result = fn(part)
            if store is not None:
                store.save(index, result)
        local[index] = result
    if reused:
        log.info("resumed: %d finished chunk(s) loaded from %s", reused, store.folder)
    return gather_in_order(local)


# ---------------------------------------------------------------- collectives for training


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64; identical on every rank)."""
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small things like a resume state)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 alone; its return value (pickled) on every rank.

    For the one writer's work that the others must agree with (claiming a folder, reading a
    done-marker, writing a result). A ``UserError`` on rank 0 is raised on every rank with the
    same message, so each exits with its one line instead of waiting in the next collective;
    any other failure of rank 0 is re-raised there and ends the others with a short error.
    """
    if not is_distributed():
        return fn()
    outcome: tuple[str, Any] = ("failed", None)
    if is_main():
        try:
            outcome = ("ok", fn())
        except UserError as error:
            outcome = ("user error", str(error))
        except BaseException:
            broadcast_object(outcome)  # the others stop too, then rank 0 reports its traceback
            raise
    kind, value = broadcast_object(outcome)
    if kind == "user error":
        raise UserError(value)
    if kind == "failed":
        raise RuntimeError("rank 0 failed (its error is reported above)")
    return value


def sync_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=src)


def wrap_ddp(module: nn.Module) -> nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` when distributed, else itself.

    Rank 0's parameters and buffers are broadcast at construction, so every rank starts equal.
    """
    if not is_distributed():
        return module
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


# ---------------------------------------------------------------- launching


def report_user_error(message: str) -> bool:
    """Under ``launch``, leave ``message`` for the launcher (it prints it once); say if we did."""
    folder = os.environ.get(ENV_ERROR_DIR)
    if not folder:
        return False
    write_text(Path(folder) / f"rank{os.environ.get('RANK', '0')}.txt", message)
    return True


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``robustlab ARGV`` as ``nproc`` local processes under ``torch.distributed.run``.

    Returns the exit code the command would have: 0, 2 for a user error (its message printed
    once), else 1. Each process gets one thread unless ``OMP_NUM_THREADS`` is set.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    if nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {nproc}")
    # Beyond one process per core they only contend, each holding a model and its data.
    check_budget("nproc", nproc, f"--nproc (this machine has {os.cpu_count()} CPU cores)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # also silences torchrun's banner about it
    # torchrun's agent logs every rendezvous step and its failure report: we report failures.
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="robustlab-dist-") as errors:
        os.environ[ENV_ERROR_DIR] = errors
        args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "robustlab", *argv])
        try:
            torchrun(args)
        except ChildFailedError as failure:
            messages = sorted(Path(errors).glob("rank*.txt"))
            if messages:
                print(
                    f"robustlab: error: {messages[0].read_text(encoding='utf-8')}", file=sys.stderr
                )
                return 2
            ranks = ", ".join(
                f"rank {r} (exit code {f.exitcode})" for r, f in sorted(failure.failures.items())
            )
            print(f"robustlab: error: distributed run failed: {ranks}", file=sys.stderr)
            return 1
        finally:
            del os.environ[ENV_ERROR_DIR]
    return 0


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N`` (what the launched processes run)."""
    out: list[str] = []
    skip = False
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token == "--nproc" and i + 1 < len(argv):
            skip = True
            continue
        if token.startswith("--nproc="):
            continue
        out.append(token)
    return out


__all__ = [
    "ChunkStore",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "chunk_block",
    "chunk_seed",
    "chunk_slices",
    "exit_rank",
    "gather_in_order",
    "init_from_env",
    "is_distributed",
    "is_main",
    "launch",
    "local_rank",
    "map_chunks",
    "on_main",
    "rank",
    "report_user_error",
    "seeded",
    "shard_chunks",
    "shutdown",
    "strip_nproc",
    "sync_buffers",
    "under_torchrun",
    "world_size",
    "wrap_ddp",
]
