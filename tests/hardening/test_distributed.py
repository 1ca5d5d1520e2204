"""Scale-out: sharding, ordered gathering and resumable chunks; 2 processes vs 1 under torchrun.

Evaluation sharded over 2 processes must equal the single-process result bit for bit (same
chunk boundaries, randomness seeded per chunk). DDP training over 2 processes must match one
process within ``WEIGHT_TOLERANCE``: each optimiser step sees the same global batch, only the
order of float additions differs (small-cnn has no BatchNorm, whose per-rank batch statistics
would otherwise add a real difference).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    DIGITS,
    SMALL_CNN,
    assert_one_line_error,
    call_cli,
    cli_env,
    read_json,
    run_cli,
    without_timing,
)
from safetensors.torch import load_file

from robustlab import distributed
from robustlab.distributed import ChunkStore, chunk_block, chunk_slices, map_chunks, shard_chunks

WORKER = Path(__file__).with_name("dist_worker.py")
# Largest |w_2proc - w_1proc| after 2 epochs (~80 Adam steps): rounding-level differences
# (measured ~1e-6) that Adam's normalisation can amplify a little, far below a real change.
WEIGHT_TOLERANCE = 1e-4
TRAIN = ("train", *DIGITS, *SMALL_CNN, "--epochs", "2", "--batch-size", "32", "--limit", "600")


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize(("n_items", "chunk_size"), [(0, 4), (1, 4), (7, 16), (100, 16), (64, 8)])
def test_shards_are_disjoint_ordered_and_cover_every_chunk(world, n_items, chunk_size):
    everything = chunk_slices(n_items, chunk_size)
    shards = [shard_chunks(n_items, chunk_size, rank_=r, world=world) for r in range(world)]
    assert [part for shard in shards for part in shard] == everything  # rank order = item order
    sizes = [len(shard) for shard in shards]
    assert max(sizes, default=0) - min(sizes, default=0) <= 1  # balanced
    covered = [i for part in everything for i in range(part.start, part.stop)]
    assert covered == list(range(n_items))
    assert all(part.start % chunk_size == 0 for part in everything)  # single-process boundaries
    assert list(chunk_block(len(everything), 0, 1)) == list(range(len(everything)))


def test_map_chunks_is_independent_of_the_callers_random_stream():
    def noise(part: slice) -> torch.Tensor:
        return torch.rand(part.stop - part.start)

    torch.manual_seed(1)
    first = torch.cat(map_chunks(noise, 50, 8, seed=3))
    torch.manual_seed(2)
    after = torch.rand(1)
    torch.manual_seed(2)
    second = torch.cat(map_chunks(noise, 50, 8, seed=3))
    assert torch.equal(first, second)
    assert torch.equal(torch.rand(1), after)  # the caller's stream was restored
    # a chunk's numbers depend on its index only: recomputing one chunk alone gives the same
    with distributed.seeded(3, 2):
        assert torch.equal(noise(slice(16, 24)), first[16:24])


def test_gather_in_order_refuses_a_missing_chunk():
    with pytest.raises(RuntimeError, match="missing"):
        distributed.gather_in_order({0: "a", 2: "c"})


def test_chunk_store_resumes_and_ignores_stale_or_planted_files(tmp_path):
    calls: list[int] = []

    def work(part: slice) -> dict[str, torch.Tensor]:
        calls.append(part.start)
        return {"x": torch.arange(part.start, part.stop) * 2.0}

    store = ChunkStore(tmp_path / "chunks", {"attack": "pgd", "eps": [0.1]})
    full = map_chunks(work, 20, 8, store=store)
    assert calls == [0, 8, 16] and len(list(store.folder.glob("chunk-*.pt"))) == 3
    store.path(1).unlink()  # as if killed before chunk 1 was saved
    store.path(2).write_bytes(store.path(2).read_bytes()[:40])  # truncated
    calls.clear()
    again = map_chunks(work, 20, 8, store=store)
    assert calls == [8, 16]
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(full, again, strict=True))
    calls.clear()
    other = ChunkStore(store.folder, {"attack": "pgd", "eps": [0.2]})  # other settings
    map_chunks(work, 20, 8, store=other)
    assert calls == [0, 8, 16]
    store.clear()
    assert not store.folder.exists()


def test_strip_nproc():
    assert distributed.strip_nproc(["--nproc", "2", "train", "--x", "1"]) == ["train", "--x", "1"]
    assert distributed.strip_nproc(["-v", "--nproc=4", "train"]) == ["-v", "train"]


def test_sharded_evaluation_over_2_processes_equals_1_process_bit_for_bit(tmp_path):
    sys.path.insert(0, str(WORKER.parent))
    try:
        from dist_worker import evaluation
    finally:
        sys.path.remove(str(WORKER.parent))
    out = tmp_path / "two.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*cmd, str(WORKER), str(out)],
        env=cli_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=1200,  # a hang guard only, generous for a loaded machine
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(out, weights_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank: identical kernels, identical bits
    try:
        one = evaluation()
    finally:
        torch.set_num_threads(threads)
    assert int(two["world_size"]) == 2 and int(one["world_size"]) == 1
    assert one.keys() == two.keys()
    for key in one:
        if key != "world_size":
            assert torch.equal(one[key], two[key]), key
    # the random starts did something: the adversarials differ from a plain copy
    assert not torch.equal(one["adversarials"][0], one["adversarials"][1])


@pytest.mark.slow
def test_nproc_2_training_matches_one_process_and_only_rank0_writes(tmp_path, capsys):
    code, _, err = call_cli([*TRAIN, "--out", tmp_path / "one"], capsys)
    assert code == 0, err
    two = run_cli(["--nproc", "2", *TRAIN, "--out", tmp_path / "two"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Traceback" not in two.stderr
    # one JSON summary (rank 0 prints, the other rank is silent)
    assert two.stdout.count('"run_dir"') == 1
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert not any(name.startswith(".") or name.endswith(".tmp") for name in names)
    w1 = load_file(tmp_path / "one" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert worst < WEIGHT_TOLERANCE, worst
    assert any(not torch.equal(w1[k], w2[k]) for k in w1) or worst == 0.0
    h1 = read_json(tmp_path / "one" / "history.json")
    h2 = read_json(tmp_path / "two" / "history.json")
    assert [h["epoch"] for h in h1] == [h["epoch"] for h in h2] == [1, 2]
    n_val = read_json(tmp_path / "one" / "config.json")["data_info"]["sizes"]["val"]
    for a, b in zip(h1, h2, strict=True):
        # every epoch saw every training image once; at most one val image may flip
        assert abs(a["val_accuracy"] - b["val_accuracy"]) <= 1 / n_val + 1e-12
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)


def test_nproc_user_error_is_one_line_from_the_launcher(tmp_path):
    done = run_cli(["--nproc", "2", *TRAIN, "--data", "digitz", "--out", tmp_path / "x"], tmp_path)
    assert_one_line_error(done.returncode, done.stderr, "unknown data set 'digitz'", "digits")
    assert not (tmp_path / "x").exists()


def one_and_two_processes(args: list, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``robustlab ARGS --out one`` in this process (one thread, as each torchrun rank), then
    ``robustlab --nproc 2 ARGS --out two``; returns the second (finished) process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, err = call_cli([*args, "--out", tmp_path / "one"], capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    two = run_cli(["--nproc", "2", *args, "--out", tmp_path / "two"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    return two


@pytest.mark.slow
def test_nproc_2_attack_equals_one_process_bit_for_bit(untrained_run, tmp_path, capsys):
    args = [
        "attack",
        untrained_run,
        "--attack",
        "pgd",
        "--eps",
        "0.05,0.1",
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--limit",
        "100",
    ]
    one_and_two_processes(args, tmp_path, capsys)
    one_json = without_timing(read_json(tmp_path / "one" / "attack.json"))
    assert one_json == without_timing(read_json(tmp_path / "two" / "attack.json"))
    a = load_file(tmp_path / "one" / "adversarials.safetensors")
    b = load_file(tmp_path / "two" / "adversarials.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_nproc_2_evaluate_attack_equals_one_process(untrained_run, tmp_path, capsys):
    """``evaluate --attack`` shards its white-box and noise sweeps over the ranks (each rank
    crafts and scores its own batches): the written results equal one process's."""
    args = [
        "evaluate", untrained_run, "--attack", "pgd", "--eps", "0.05,0.1", "--steps", "3",
        "--batch-size", "16", "--limit", "100", "--noise", "--no-unbounded-check",
        "--examples", "1", "--save-adversarials", "4",
    ]  # fmt: skip
    two = one_and_two_processes(args, tmp_path, capsys)
    assert two.stdout.count("wrote ") == 1  # rank 0 alone writes and prints
    one_curves = read_json(tmp_path / "one" / "curves.json")
    assert without_timing(one_curves) == without_timing(read_json(tmp_path / "two" / "curves.json"))
    assert [c["kind"] for c in one_curves["curves"]] == ["white-box", "noise"]
    assert (tmp_path / "one" / "records.csv").read_text() == (
        tmp_path / "two" / "records.csv"
    ).read_text()
    # tensors, not bytes: safetensors orders its header's metadata differently in each process
    a, b = (
        load_file(tmp_path / run / "adversarials" / "adversarials.safetensors")
        for run in ("one", "two")
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sweep_chunks_reduces_each_batch_where_it_was_crafted():
    from robustlab.attacks import get_attack, sweep_dataset
    from robustlab.attacks.sweep import sweep_chunks
    from robustlab.models import ModelSpec, create_model

    torch.manual_seed(0)
    model = create_model(ModelSpec(arch="small-cnn", num_classes=3, in_chans=1, input_size=12))
    model.eval()
    images, labels = torch.rand(21, 1, 12, 12), torch.randint(0, 3, (21,))
    attack = get_attack("pgd", eps=0.1, steps=2, seed=0)
    seen: list[slice] = []

    def scores(part: slice, x: torch.Tensor, result) -> dict[str, torch.Tensor]:
        seen.append(part)
        assert torch.equal(x, images[part])  # the chunk's own clean images
        return {"correct": result.correct, "linf": result.delta_linf}

    parts = sweep_chunks(attack, model, images, labels, [0.05, 0.1], reduce=scores, batch_size=8)
    assert seen == chunk_slices(21, 8)
    whole = sweep_dataset(attack, model, images, labels, [0.05, 0.1], batch_size=8)
    assert torch.equal(torch.cat([p["correct"] for p in parts], 1), whole.correct)
    assert torch.equal(torch.cat([p["linf"] for p in parts], 1), whole.delta_linf)


def test_a_rank_leaves_with_its_code_and_its_buffered_output(tmp_path):
    """``exit_rank`` skips the interpreter's teardown (where gloo's threads could abort the
    rank) but not the output: buffered stdout/stderr and log records still come out."""
    code = (
        "import logging, sys\n"
        "from robustlab.distributed import exit_rank\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "print('result line')\n"
        "logging.getLogger('x').warning('a warning')\n"
        "exit_rank(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert done.returncode == 3
    assert done.stdout == "result line\n"
    assert "a warning" in done.stderr
