"""The training loop: strategies frozen / finetune / scratch, early stopping, exact resume.

Reading order: ``fit`` plans the phases of a run (head-only on cached features, then the full
model on pixels), and runs each epoch through ``_run_epoch``. Every epoch's randomness is a
function of (seed, epoch), and the whole training state is saved atomically after each epoch,
so a run killed at any point and started again ends with bit-identical weights.

Under torchrun (``robustlab.distributed``) the same code trains with DistributedDataParallel:
each global batch of ``batch_size`` (the single-process batch) is split across the ranks and the
gradients averaged, weighted by each rank's share, so every optimiser step equals the
single-process step up to float rounding (BatchNorm excepted: it sees each rank's sub-batch).
Scoring and feature caching are sharded by chunks and gathered; only rank 0 writes the state.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustlab import distributed
from robustlab.data import stream
from robustlab.errors import UserError
from robustlab.io import write_bytes
from robustlab.training.augment import augment_batch
from robustlab.training.config import TrainConfig
from robustlab.training.modes import eval_mode, freeze, set_train_mode

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"


class Objective(Protocol):
    """Turns one training batch into a scalar loss; defences plug in here.

    Called with the model already in train mode (frozen BatchNorm kept in eval). An objective
    that crafts adversarial examples should do so under ``eval_mode(model)``.
    """

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> Tensor: ...


def cross_entropy_objective(model: nn.Module, x: Tensor, y: Tensor, epoch: int) -> Tensor:
    return F.cross_entropy(model(x), y)


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one set of trainable parameters and one optimiser."""

    name: str  # "head" (cached features) or "full" (pixels)
    first_epoch: int
    last_epoch: int  # inclusive
    lr: float
    trainable: str  # "head", "all" or a number of last backbone blocks


def plan_phases(config: TrainConfig, cache_features: bool) -> list[Phase]:
    """The phases a strategy runs, in order (epochs are numbered from 1)."""
    last = config.epochs
    if config.strategy == "scratch":
        return [Phase("full", 1, last, config.lr, "all")]
    if config.strategy == "frozen":
        return [Phase("head" if cache_features else "full", 1, last, config.lr, "head")]
    # finetune: the new head first (on cached features when possible), then the backbone too.
    head_end = config.head_epochs
    phases = []
    if head_end:
        phases.append(Phase("head" if cache_features else "full", 1, head_end, config.lr, "head"))
    phases.append(
        Phase("full", head_end + 1, last, config.lr * config.finetune_lr_factor, config.unfreeze)
    )
    return phases


EpochCallback = Callable[[dict[str, Any]], None]


def fit(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    config: TrainConfig,
    objective: Objective | None = None,
    *,
    state_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place and return the per-epoch history.

    train, val: ``(images, labels)`` with images (N, C, H, W) float32 in [0, 1].
    objective: the loss of one batch; plain cross-entropy when None. Feature caching for the
        head-only phases is used only with plain cross-entropy (a defence needs pixels).
    state_dir: where the resumable training state is saved after every epoch; a run started
        again with the same arguments continues from the last finished epoch.
    on_epoch: called on rank 0 with each epoch's history record once the epoch's state is
        saved (live experiment tracking); epochs of an earlier, resumed process are not repeated.
    """
    _check_data("train", *train, model)
    _check_data("val", *val, model)
    # augmented pixels change every epoch: their features cannot be cached
    cache_features = (
        objective is None
        and not config.augment
        and hasattr(model, "features")
        and hasattr(model, "head")
    )
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    run = _Training(
        model,
        {"train": train, "val": val},
        config,
        objective or cross_entropy_objective,
        state_dir,
        progress,
        on_epoch,
    )
    run.resume()
    for phase in plan_phases(config, cache_features):
        if len(run.history) >= phase.last_epoch or _stopped_early(run.history, run.best, config):
            continue
        run.run_phase(phase)
    if config.patience is not None and run.best["weights"] is not None:
        model.load_state_dict(run.best["weights"])
    freeze(model, False)
    model.eval()
    return run.history


@dataclass
class _Training:
    """One ``fit`` call's state: the history so far, the best epoch, cached head features."""

    model: nn.Module
    data: dict[str, tuple[Tensor, Tensor]]  # "train", "val": pixels
    config: TrainConfig
    objective: Objective
    state_dir: str | Path | None
    progress: bool
    on_epoch: EpochCallback | None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(
        default_factory=lambda: {"accuracy": -1.0, "epoch": 0, "weights": None}
    )
    state: dict[str, Any] | None = None  # what a resumed run loaded
    cached: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # head features

    def resume(self) -> None:
        """Continue from the saved state, if any."""
        # rank 0 reads the state (state_dir need not be shared by every node) and hands it round
        loaded = _load_state(self.state_dir) if distributed.is_main() else None
        self.state = distributed.broadcast_object(loaded)
        if self.state:
            self.history, self.best = self.state["history"], self.state["best"]
            self.model.load_state_dict(self.state["model"])
            log.info("resuming after epoch %d from %s", len(self.history), self.state_dir)

    def run_phase(self, phase: Phase) -> None:
        """The remaining epochs of ``phase``, each saved; stops early on patience."""
        model, config, state = self.model, self.config, self.state
        _set_trainable(model, phase.trainable)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = _make_optimizer(params, config, phase.lr)
        if state and state["phase"] == phase.name and len(self.history) >= phase.first_epoch:
            optimizer.load_state_dict(state["optimizer"])
        if phase.name == "head" and not self.cached:
            self.cached = {
                split: (_extract_features(model, images, config), labels)
                for split, (images, labels) in self.data.items()
            }
        data = self.cached if phase.name == "head" else self.data
        # wrapped per phase: DDP records which parameters train when it is built
        trained = distributed.wrap_ddp(model.head if phase.name == "head" else model)
        for epoch in range(max(phase.first_epoch, len(self.history) + 1), phase.last_epoch + 1):
            record = _run_epoch(
                model, trained, phase, epoch, data, optimizer, self.objective, config, self.progress
            )
            self.history.append(record)
            if record["val_accuracy"] > self.best["accuracy"]:
                self.best = {"accuracy": record["val_accuracy"], "epoch": epoch, "weights": None}
                if config.patience is not None:
                    self.best["weights"] = copy.deepcopy(model.state_dict())
            _save_state(self.state_dir, model, optimizer, phase, self.history, self.best)
            if self.on_epoch is not None and distributed.is_main():
                self.on_epoch(record)
            if _stopped_early(self.history, self.best, config):
                log.info("early stop: no val improvement since epoch %d", self.best["epoch"])
                break


def _stopped_early(
    history: list[dict[str, Any]], best: dict[str, Any], config: TrainConfig
) -> bool:
    return config.patience is not None and len(history) - best["epoch"] >= config.patience


def _run_epoch(
    model: nn.Module,
    trained: nn.Module,
    phase: Phase,
    epoch: int,
    data: dict[str, tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    objective: Objective,
    config: TrainConfig,
    progress: bool,
) -> dict[str, Any]:
    """One epoch of updates, then scores. ``trained`` is what the updates run through: the
    model (or its head, on cached features), DDP-wrapped when distributed."""
    start = time.perf_counter()
    seed = config.seed * 100_003 + epoch
    rank = distributed.rank()
    # dropout, random starts of attacks: a function of (seed, epoch), and of the rank
    torch.manual_seed(seed if rank == 0 else distributed.chunk_seed(seed, rank))
    # the same permutation on every rank: each takes its share of every global batch
    order = torch.randperm(len(data["train"][1]), generator=torch.Generator().manual_seed(seed))
    head_only = phase.name == "head"

    def step_loss(x: Tensor, y: Tensor) -> Tensor:
        if head_only:
            return F.cross_entropy(trained(x), y)
        return objective(trained, x, y, epoch)

    set_train_mode(model)
    if head_only:
        model.head.train()
    total_loss, seen = _update_epoch(
        step_loss,
        data["train"],
        order,
        optimizer,
        config,
        seed,
        epoch,
        augment=config.augment and not head_only,
        desc=f"epoch {epoch}/{config.epochs} {phase.name}",
        progress=progress,
    )
    distributed.sync_buffers(model)  # rank 0's BatchNorm statistics are the ones saved
    return _epoch_record(
        model.head if head_only else model, phase, epoch, data, config, total_loss, seen, start
    )


def _update_epoch(
    step_loss: Callable[[Tensor, Tensor], Tensor],
    train: tuple[Tensor, Tensor],
    order: Tensor,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    seed: int,
    epoch: int,
    *,
    augment: Any,
    desc: str,
    progress: bool,
) -> tuple[float, int]:
    """One optimiser step per mini-batch of ``order``; this rank's (summed loss, samples)."""
    rank = distributed.rank()
    total_loss, seen = 0.0, 0
    batches = _batches(*train, config.batch_size, order, config.channels_last)
    bar = tqdm(
        batches,
        total=math.ceil(len(order) / config.batch_size),
        desc=desc,
        disable=not progress or not distributed.is_main(),
        leave=False,
        unit="batch",
    )
    for number, (x, y, weight) in enumerate(bar):
        if augment:
            x = augment_batch(x, config.augment, distributed.chunk_seed(seed, number * 1009 + rank))
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss(x, y)
        if not torch.isfinite(loss):
            raise UserError(
                f"training diverged at epoch {epoch} (loss is {loss.item()}); lower --lr"
            )
        # DDP averages gradients over ranks: weighting by share makes that the global mean
        (loss if weight == 1.0 else loss * weight).backward()
        optimizer.step()
        if weight:
            total_loss += loss.item() * len(y)
            seen += len(y)
        bar.set_postfix(loss=f"{total_loss / max(seen, 1):.4f}")
    return total_loss, seen


def _epoch_record(
    forward: nn.Module,
    phase: Phase,
    epoch: int,
    data: dict[str, tuple[Tensor, Tensor]],
    config: TrainConfig,
    total_loss: float,
    seen: int,
    start: float,
) -> dict[str, Any]:
    """The epoch's history record: train and val scores of ``forward`` after the updates."""
    train_loss, train_acc = _score(forward, *data["train"], config)
    val_loss, val_acc = _score(forward, *data["val"], config)
    total_loss, seen = distributed.all_reduce_sum([total_loss, seen])
    record = {
        "epoch": epoch,
        "phase": phase.name,
        "lr": phase.lr,
        "objective_loss": total_loss / max(seen, 1),
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "seconds": time.perf_counter() - start,
    }
    log.info(
        "epoch %d/%d %s: loss %.4f, train acc %.4f, val acc %.4f (%.1fs)",
        epoch,
        config.epochs,
        phase.name,
        record["objective_loss"],
        train_acc,
        val_acc,
        record["seconds"],
    )
    return record


def _rank_share(index: Tensor) -> tuple[Tensor, float]:
    """This rank's part of a global batch ``index`` and its loss weight ``world * part / batch``.

    Chosen on indices, so a rank reads only its own images. One process: the whole batch,
    weight 1. A rank whose part is empty (a last batch smaller than the world) still steps,
    on one sample with weight 0, or DDP would wait for it forever.
    """
    world = distributed.world_size()
    if world == 1:
        return index, 1.0
    part = torch.tensor_split(index, world)[distributed.rank()]
    if len(part) == 0:
        return index[:1], 0.0
    return part, world * len(part) / len(index)


def _batches(
    inputs: Tensor, labels: Tensor, batch_size: int, order: Tensor, channels_last: bool
) -> Iterator[tuple[Tensor, Tensor, float]]:
    """Yield this rank's ``(x, y, loss weight)`` of every mini-batch in ``order``.

    Streamed images are read by the data loader's workers while the model computes.
    """
    shares = [
        _rank_share(order[start : start + batch_size]) for start in range(0, len(order), batch_size)
    ]
    images = stream.batches(inputs, [index for index, _ in shares])
    for (index, weight), x in zip(shares, images, strict=True):
        # a streamed batch is formed on the CPU; in-memory images are already where labels are
        yield _layout(x.to(labels.device), channels_last), labels[index], weight


def _layout(x: Tensor, channels_last: bool) -> Tensor:
    """Images (B, C, H, W) in channels_last when asked (features (B, F) stay as they are)."""
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def _score(
    forward: nn.Module, inputs: Tensor, labels: Tensor, config: TrainConfig
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``forward`` in eval mode (sharded over ranks)."""
    total_loss, correct = 0.0, 0
    with eval_mode(forward):
        parts = distributed.shard_chunks(len(labels), config.eval_batch_size)
        for part, x in zip(parts, stream.batches(inputs, parts), strict=True):
            x, y = _layout(x.to(labels.device), config.channels_last), labels[part]
            logits = forward(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    total_loss, correct = distributed.all_reduce_sum([total_loss, correct])
    return total_loss / len(labels), correct / len(labels)


@torch.no_grad()
def _extract_features(model: nn.Module, images: Tensor, config: TrainConfig) -> Tensor:
    """Backbone features of every image, computed once: extra head epochs cost only the head.

    Sharded by chunks over ranks and gathered: every rank gets all features, bit-identical to
    one process computing them alone.
    """

    device = next(model.parameters()).device  # streamed batches are formed on the CPU

    def features(part: slice) -> Tensor:
        return model.features(_layout(images[part].to(device), config.channels_last))

    with eval_mode(model):
        chunks = distributed.map_chunks(features, len(images), config.eval_batch_size)
    return torch.cat(chunks) if chunks else images.new_zeros((0, 0))


def _set_trainable(model: nn.Module, trainable: str) -> None:
    """Freeze everything, then unfreeze the head and the requested part of the backbone."""
    freeze(model, True)
    freeze(model.head if hasattr(model, "head") else model, False)
    if trainable == "all" or not hasattr(model, "head"):
        freeze(model, False)
    elif trainable.isdigit():
        for block in model.blocks()[-int(trainable) :]:
            freeze(block, False)
    # Blocks frozen by the model itself (AnB layer transfer) stay frozen in every phase.
    for module in getattr(model, "frozen_modules", list)():
        freeze(module, True)


def _make_optimizer(
    params: list[nn.Parameter], config: TrainConfig, lr: float
) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True
        )
    # Keras' RMSprop defaults (rho 0.9, eps 1e-7), as in the leaf study.
    return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7, weight_decay=config.weight_decay)


def _check_data(split: str, images: Tensor, labels: Tensor, model: nn.Module) -> None:
    """Refuse data a model cannot learn from, before any epoch runs (errors name the split)."""
    if images.dim() != 4 or len(images) != len(labels):
        raise UserError(
            f"{split} data must be images (N, C, H, W) with N labels, got {tuple(images.shape)} "
            f"and {len(labels)} labels"
        )
    if len(labels) == 0:
        raise UserError(f"the {split} split is empty")
    channels = getattr(getattr(model, "spec", None), "in_chans", images.shape[1])
    if images.shape[1] != channels:
        raise UserError(
            f"{split} images have {images.shape[1]} channels but the model takes {channels}"
        )
    # NaN would surface later as a misleading divergence (streamed pixels come from uint8 or
    # from float arrays validated when read: finite by construction)
    if not stream.is_streamed(images) and not torch.isfinite(images).all():
        raise UserError(f"{split} images hold NaN or infinite pixel values")


def _save_state(
    state_dir: str | Path | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    phase: Phase,
    history: list[dict[str, Any]],
    best: dict[str, Any],
) -> None:
    """One file, replaced atomically: a kill at any moment leaves the last complete epoch."""
    if state_dir is None or not distributed.is_main():
        return
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "phase": phase.name,
        "history": history,
        "best": best,
    }
    # serialised in memory, then written by Python: a full disk is an OSError (a UserError)
    # rather than torch's RuntimeError from deep in its C++ writer
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(Path(state_dir) / STATE_FILE, buffer.getvalue())


def _load_state(state_dir: str | Path | None) -> dict[str, Any] | None:
    if state_dir is None or not (Path(state_dir) / STATE_FILE).exists():
        return None
    path = Path(state_dir) / STATE_FILE
    try:
        # weights_only: tensors, numbers, strings and containers only; no code can run.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"refusing to load training state {path}: it holds more than tensors (a pickle that "
            "could run code); delete it to start over"
        ) from None
    except Exception as error:
        reason = next((line for line in str(error).splitlines() if line.strip()), "unreadable")
        raise UserError(
            f"training state {path} is corrupt ({reason}); delete it to start over"
        ) from None
    if not _is_state(state):
        raise UserError(f"{path} is not a robustlab training state; delete it to start over")
    return state


def _is_state(state: Any) -> bool:
    """The shape ``_save_state`` writes (a file that merely unpickles is not enough)."""
    return (
        isinstance(state, dict)
        and isinstance(state.get("model"), dict)
        and isinstance(state.get("optimizer"), dict)
        and isinstance(state.get("phase"), str)
        and isinstance(state.get("history"), list)
        and all(isinstance(h, dict) for h in state["history"])
        and isinstance(state.get("best"), dict)
    )


def clear_state(state_dir: str | Path) -> None:
    """Remove the resumable state once a run's final outputs are written."""
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
