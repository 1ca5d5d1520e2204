"""Training settings: ``TrainSpec``, validated once at the edge (errors name the field)."""

from __future__ import annotations

import typing
from dataclasses import asdict
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from robustlab.budgets import check_budget
from robustlab.errors import UserError
from robustlab.specs import Count, Natural, spec

Strategy = Literal["frozen", "finetune", "scratch"]
OptimizerName = Literal["rmsprop", "adam", "sgd"]
Augmentation = Literal["crop", "flip", "jitter"]  # training.augment
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)
OPTIMIZERS: tuple[str, ...] = typing.get_args(OptimizerName)


def _check_augment(names: Any) -> Any:
    choices = typing.get_args(Augmentation)
    if isinstance(names, str) or not all(name in choices for name in names):
        raise UserError(f"augment must be a list of {', '.join(choices)}, got {names!r}")
    return names


@spec("train")
class TrainSpec:
    """How to train a classifier.

    strategy: ``frozen`` trains only a new head on a frozen backbone (features cached once);
        ``finetune`` trains the head for ``head_epochs`` on cached features, then unfreezes
        ``unfreeze`` (``"all"`` or the last k backbone blocks) at ``lr * finetune_lr_factor``;
        ``scratch`` trains every parameter from its initialisation.
    """

    strategy: Strategy = Field(
        default="frozen",
        description="frozen: new head on a frozen backbone; finetune: head first, then "
        "unfreeze; scratch: every parameter",
    )
    optimizer: OptimizerName = Field(default="rmsprop", description="optimiser")
    lr: float = Field(
        default=1e-4, gt=0.0, le=10.0, allow_inf_nan=False, description="learning rate"
    )
    epochs: Count = Field(default=10, description="total epochs (finetune: head epochs included)")
    batch_size: Count = Field(default=32, description="images per training batch")
    seed: Natural = Field(default=0, description="seed of the head init and shuffling")
    patience: Count | None = Field(
        default=None,
        description="early stopping: epochs without a better val accuracy (best weights restored)",
    )
    weight_decay: float = Field(default=0.0, ge=0.0, allow_inf_nan=False, description="L2 penalty")
    momentum: float = Field(
        default=0.9, ge=0.0, le=1.0, allow_inf_nan=False, description="sgd / rmsprop momentum"
    )
    head_epochs: Natural = Field(default=2, description="finetune: head-only epochs first")
    unfreeze: str = Field(default="all", description="finetune: 'all' or the last k blocks")
    finetune_lr_factor: float = Field(
        default=0.1,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="finetune: lr multiplier once the backbone is unfrozen",
    )
    channels_last: bool = Field(default=True, description="NHWC memory layout (faster on CPU)")
    eval_batch_size: Count = Field(default=128, description="images per scoring batch")
    augment: Annotated[tuple[Augmentation, ...], BeforeValidator(_check_augment)] = Field(
        default=(),
        description="opt-in training augmentation: crop (random resized crop), flip, jitter "
        "(colour); recorded in config.json",
    )

    def __post_init__(self) -> None:
        check_budget("epochs", self.epochs, "epochs")
        if self.strategy == "finetune" and self.head_epochs >= self.epochs:
            raise UserError(
                f"head_epochs ({self.head_epochs}) must be < epochs ({self.epochs}) for finetune, "
                "or nothing is fine-tuned"
            )
        object.__setattr__(self, "augment", tuple(dict.fromkeys(self.augment)))
        if self.unfreeze != "all" and not (self.unfreeze.isdigit() and int(self.unfreeze) > 0):
            raise UserError(
                f"unfreeze must be 'all' or a positive number of blocks, got '{self.unfreeze}'"
            )

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if not self.augment:  # absent when off: runs without augmentation record what they did
            del values["augment"]
        else:
            values["augment"] = list(self.augment)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSpec:
        return cls(**values)


TrainConfig = TrainSpec  # the name callers used before the specs contract (issue 12)
