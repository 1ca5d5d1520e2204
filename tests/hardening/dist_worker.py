"""A sharded attack evaluation, run under torchrun by ``test_distributed`` (and imported by it).

``python -m torch.distributed.run --standalone --nproc-per-node N dist_worker.py OUT`` makes
every rank evaluate its block of chunks; rank 0 saves the gathered tensors to ``OUT``.
"""

from __future__ import annotations

import sys

import torch

from robustlab import distributed
from robustlab.attacks import get_attack, sweep, sweep_dataset
from robustlab.data import DataSpec, load_splits
from robustlab.models import ModelSpec, create_model

CHUNK = 16  # 100 images -> 7 chunks: ranks get unequal blocks and a short last chunk
EPSILONS = [0.05, 0.1]


def evaluation() -> dict[str, torch.Tensor]:
    """Two sharded PGD evaluations of 100 digits.

    ``sweep_dataset`` (what ``robustlab attack`` runs) with the attack's own seeded generator,
    and a bare ``map_chunks`` whose random starts come from the *global* RNG (``seed=None``),
    seeded per chunk by ``map_chunks(seed=...)``.
    """
    test = load_splits(DataSpec("digits", image_size=12)).test
    images, labels = test.images[:100], test.labels[:100]
    torch.manual_seed(0)
    model = create_model(ModelSpec(arch="small-cnn", num_classes=10, in_chans=1, input_size=12))
    model.eval()
    attack = get_attack("pgd", eps=max(EPSILONS), steps=3, seed=None)

    def chunk(part: slice) -> dict[str, torch.Tensor]:
        result = sweep(attack, model, images[part], labels[part], EPSILONS)
        return {
            "adversarials": torch.stack(result.adversarials),  # (E, B, C, H, W)
            "correct": result.correct,  # (E, B)
            "clean_pred": result.clean_pred,  # (B,)
        }

    parts = distributed.map_chunks(chunk, len(labels), CHUNK, seed=7)
    library = sweep_dataset(
        get_attack("pgd", eps=max(EPSILONS), steps=3, seed=0),
        model,
        images,
        labels,
        EPSILONS,
        batch_size=CHUNK,
    )
    return {
        "sweep_dataset_adversarials": torch.stack(library.adversarials),
        "sweep_dataset_correct": library.correct,
        "sweep_dataset_linf": library.delta_linf,
        "adversarials": torch.cat([p["adversarials"] for p in parts], dim=1),
        "correct": torch.cat([p["correct"] for p in parts], dim=1),
        "clean_pred": torch.cat([p["clean_pred"] for p in parts]),
        "world_size": torch.tensor(distributed.world_size()),
    }


if __name__ == "__main__":
    distributed.init_from_env()
    result = evaluation()
    if distributed.is_main():
        torch.save(result, sys.argv[1])
    distributed.shutdown()
