"""Frozen-backbone training: naive (backbone forward every epoch) vs cached features.

Prints the wall time of N epochs each way, measured side by side in one run, and their ratio
(goal >= 5). Model: tf_efficientnet_lite0 with offline ImageNet weights, frozen, new head, on the
leaf ``unhealthy`` task. Both runs train the same head with the same seed; the naive run feeds
pixels through the frozen backbone each step (what a Keras ``trainable=False`` model does).

    python benchmarks/bench_feature_cache.py [--epochs 10] [--limit 1000] [--resize-to 96]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from robustlab.data import DataSpec, load_splits
from robustlab.models import ModelSpec, create_model
from robustlab.training import TrainConfig, fit


def pixel_objective(model, x, y, epoch):
    """Plain cross-entropy, but passed as an objective so fit() cannot cache features."""
    return F.cross_entropy(model(x), y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit", type=int, default=1000, help="images used (all splits)")
    parser.add_argument("--resize-to", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    splits = load_splits(
        DataSpec(name="plantvillage-tomato", task="unhealthy", limit=args.limit), args.data_dir
    )
    train = (splits.train.images, splits.train.labels)
    val = (splits.val.images, splits.val.labels)
    config = TrainConfig(strategy="frozen", epochs=args.epochs, lr=1e-3, batch_size=32)
    spec = ModelSpec(
        arch="tf_efficientnet_lite0", num_classes=2, pretrained="offline",
        input_size=splits.train.images.shape[-1], resize_to=args.resize_to,
    )
    times, accuracy = {}, {}
    for name, objective in (("cached", None), ("naive", pixel_objective)):
        torch.manual_seed(0)
        model = create_model(spec)
        start = time.perf_counter()
        history = fit(model, train, val, config, objective, progress=False)
        times[name] = time.perf_counter() - start
        accuracy[name] = history[-1]["val_accuracy"]

    print(f"tf_efficientnet_lite0 frozen, {len(train[1])} train + {len(val[1])} val images, "
          f"{args.epochs} epochs, input {spec.input_size}px -> {args.resize_to or spec.input_size}px, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'variant':<8} {'seconds':>8} {'val acc':>8}")
    for name in times:
        print(f"{name:<8} {times[name]:>8.1f} {accuracy[name]:>8.4f}")
    print(f"speed-up cached vs naive: {times['naive'] / times['cached']:.1f}x (goal >= 5)")


if __name__ == "__main__":
    main()
