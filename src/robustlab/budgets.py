"""Resource budgets: limits on everything a user can size, checked before memory is taken.

A hostile or mistaken input (an npz of zeros that inflates to gigabytes, a label of 99999, a
billion epsilons, a YAML billion-laughs file, a model with 1e9 classes) must end in one
``UserError`` line naming the setting and its limit, not in an allocator traceback or the OOM
killer. Each limit has a default that fits every shipped data set and study on a small machine
and can be raised with an environment variable ``ROBUSTLAB_MAX_<FIELD>`` (e.g.
``ROBUSTLAB_MAX_CLASSES=50000``). The data set's decoded-pixel budget lives with the data layer.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from robustlab.errors import UserError

ENV_PREFIX = "ROBUSTLAB_MAX_"


@dataclass(frozen=True)
class Budgets:
    """Upper limits; ``max_x`` is overridden by ``$ROBUSTLAB_MAX_X``."""

    array_bytes: int = 2 << 30  # one .npy / decompressed .npz array (the leaf images: 110 MB)
    classes: int = 10_000  # classes implied by labels or asked of a model
    eps_values: int = 1_000  # epsilons in one sweep
    yaml_nodes: int = 100_000  # values of a study file after aliases are expanded
    nesting_depth: int = 64  # nesting of a JSON or YAML file robustlab reads
    json_bytes: int = 256 << 20  # size of a JSON file robustlab reads
    image_side: int = 4_096  # input_size, resize_to, image_size
    in_chans: int = 16  # a model's input channels
    model_params: int = 1_000_000_000  # parameters of a model (4 GB in float32)
    activation_bytes: int = 2 << 30  # float32 activations of one image through the model
    epochs: int = 100_000  # training epochs
    steps: int = 1_000_000  # iterations of one attack
    nproc: int = field(default_factory=lambda: max(2, os.cpu_count() or 1))  # one per core, >= 2


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _from_env(setting: dataclasses.Field[int]) -> int:
    name = env_name(setting.name)
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        if setting.default_factory is not dataclasses.MISSING:
            return int(setting.default_factory())
        return int(setting.default)  # type: ignore[arg-type]
    try:
        value = int(float(raw)) if "e" in raw.lower() else int(raw)
    except (ValueError, OverflowError):
        raise UserError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise UserError(f"{name} must be >= 1, got {value}")
    return value


def budgets() -> Budgets:
    """The budgets in force: defaults, overridden by ``ROBUSTLAB_MAX_*`` variables (read each call,
    so a test or a wrapper script can change them)."""
    return Budgets(**{setting.name: _from_env(setting) for setting in dataclasses.fields(Budgets)})


def check_budget(field: str, value: float, what: str, unit: str = "") -> None:
    """Refuse ``value`` above the budget ``field``, naming ``what`` and how to raise the limit."""
    limit = getattr(budgets(), field)
    if value > limit:
        shown = f"{value:,.0f}" if value < 1e15 else f"{value:.3g}"
        raise UserError(
            f"{what} is {shown}{unit}, above the limit of {limit:,}{unit} "
            f"(set {env_name(field)} to raise it)"
        )
