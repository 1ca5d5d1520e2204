"""Forward throughput, NCHW vs channels_last, measured side by side in one run.

    .venv/bin/python benchmarks/bench_channels_last.py [--arch tf_efficientnet_lite0] [--size 96]

Prints images/s for each memory format and batch size, and the ratio channels_last / NCHW
(> 1 means channels_last is faster). Rounds alternate between the two layouts so that a
machine shared with other jobs slows both alike; the median round is reported.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from robustlab.models import ImageClassifier, ModelSpec, create_model, to_channels_last


def images_per_second(model: ImageClassifier, x: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model(x)
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=96, help="input side in pixels")
    parser.add_argument("--batches", default="32,64", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    nchw = create_model(ModelSpec(args.arch, 10, input_size=args.size)).eval()
    nhwc = to_channels_last(copy.deepcopy(nchw))
    print(
        f"{args.arch} at {args.size}px, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'batch':>5} {'NCHW img/s':>11} {'channels_last img/s':>20} {'ratio':>6}")
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.rand(batch, 3, args.size, args.size)
        images_per_second(nchw, x), images_per_second(nhwc, x)  # warm-up (allocator, kernels)
        rates: dict[str, list[float]] = {"nchw": [], "nhwc": []}
        for _ in range(args.rounds):
            rates["nchw"].append(images_per_second(nchw, x))
            rates["nhwc"].append(images_per_second(nhwc, x))
        a, b = statistics.median(rates["nchw"]), statistics.median(rates["nhwc"])
        print(f"{batch:>5} {a:>11.1f} {b:>20.1f} {b / a:>6.2f}")


if __name__ == "__main__":
    main()
