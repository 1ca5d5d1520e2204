"""Training: strategies frozen / finetune / scratch, early stopping, resumable state."""

from robustlab.training.config import OPTIMIZERS, STRATEGIES, TrainConfig, TrainSpec
from robustlab.training.loop import Objective, cross_entropy_objective, fit, plan_phases
from robustlab.training.modes import eval_mode, freeze, set_train_mode
from robustlab.training.recipe import train_run

__all__ = [
    "OPTIMIZERS",
    "STRATEGIES",
    "Objective",
    "TrainConfig",
    "TrainSpec",
    "cross_entropy_objective",
    "eval_mode",
    "fit",
    "freeze",
    "plan_phases",
    "set_train_mode",
    "train_run",
]
