"""Training settings, validated once at the edge (errors name the field)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from robustlab.budgets import check_budget
from robustlab.errors import UserError, check_range, unknown_name

Strategy = Literal["frozen", "finetune", "scratch"]
OptimizerName = Literal["rmsprop", "adam", "sgd"]
STRATEGIES: tuple[str, ...] = ("frozen", "finetune", "scratch")
OPTIMIZERS: tuple[str, ...] = ("rmsprop", "adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """How to train a classifier.

    strategy: ``frozen`` trains only a new head on a frozen backbone (features cached once);
        ``finetune`` trains the head for ``head_epochs`` on cached features, then unfreezes
        ``unfreeze`` (``"all"`` or the last k backbone blocks) at ``lr * finetune_lr_factor``;
        ``scratch`` trains every parameter from its initialisation.
    lr: learning rate; the leaf study used RMSprop at 1e-4.
    epochs: total epochs (for ``finetune`` this includes the head epochs).
    patience: stop when validation accuracy has not improved for this many epochs and restore
        the best weights; None trains every epoch.
    """

    strategy: Strategy = "frozen"
    optimizer: OptimizerName = "rmsprop"
    lr: float = 1e-4
    epochs: int = 10
    batch_size: int = 32
    seed: int = 0
    patience: int | None = None
    weight_decay: float = 0.0
    momentum: float = 0.9
    head_epochs: int = 2
    unfreeze: str = "all"
    finetune_lr_factor: float = 0.1
    channels_last: bool = True
    eval_batch_size: int = 128
    augment: tuple[str, ...] = ()  # opt-in: any of "crop", "flip", "jitter" (training.augment)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise unknown_name("training strategy", self.strategy, STRATEGIES)
        if self.optimizer not in OPTIMIZERS:
            raise unknown_name("optimizer", self.optimizer, OPTIMIZERS)
        check_range("lr", self.lr, 0.0, 10.0, low_inclusive=False)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("momentum", self.momentum, 0.0, 1.0)
        check_range("finetune_lr_factor", self.finetune_lr_factor, 0.0, 1.0, low_inclusive=False)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            _check_int(name, getattr(self, name), 1)
        _check_int("head_epochs", self.head_epochs, 0)
        check_budget("epochs", self.epochs, "epochs")
        if self.patience is not None:
            _check_int("patience", self.patience, 1)
        if self.strategy == "finetune" and self.head_epochs >= self.epochs:
            raise UserError(
                f"head_epochs ({self.head_epochs}) must be < epochs ({self.epochs}) for finetune, "
                "or nothing is fine-tuned"
            )
        from robustlab.training.augment import AUGMENTATIONS

        if isinstance(self.augment, str) or not all(a in AUGMENTATIONS for a in self.augment):
            raise UserError(
                f"augment must be a list of {', '.join(AUGMENTATIONS)}, got {self.augment!r}"
            )
        object.__setattr__(self, "augment", tuple(dict.fromkeys(self.augment)))
        if self.unfreeze != "all" and not (self.unfreeze.isdigit() and int(self.unfreeze) > 0):
            raise UserError(f"unfreeze must be 'all' or a positive number of blocks, got '{self.unfreeze}'")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if not self.augment:  # absent when off: runs without augmentation record what they did
            del values["augment"]
        else:
            values["augment"] = list(self.augment)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise unknown_name("training setting", key, known)
        return cls(**values)


def _check_int(field: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{field} must be an integer >= {low}, got {value!r}")
