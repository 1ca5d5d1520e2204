"""The layer-transfer study (source 002): AnB, AnB+, BnB and BnB+ against n, natural and adversarial.

Source: MobileNetV2; base A = ImageNet-pretrained, base B = trained on the target set
(ImageNet-R); AnB copies the first n blocks of A, frozen, re-initialises the rest and trains
4 epochs; AnB+ copies them trainable and trains 2 epochs then fine-tunes 2; an FGSM adversarial
test set is crafted with base A's loss; natural and adversarial accuracy of every model are
plotted against n.

Here (offline): A = ImageNet tf_efficientnet_lite0 (its 9 blocks: stem, 7 stages, head conv);
B = the 10-class tomato-leaf disease task (ImageNet-R cannot be had offline). BnB / BnB+ copy
from base B instead of A. Base A has ImageNet classes, not B's, so "base A's loss" needs a B
head: the crafting model is A's frozen features + a B head, i.e. the n = all AnB model. Every
model is also attacked white-box with PGD. Notation follows Yosinski et al. 2014: ``A3B`` = the
first 3 blocks from A, frozen; ``A3B+`` = the same, trainable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from robustlab.errors import UserError
from robustlab.io import atomic_path, write_json
from robustlab.studies import common
from robustlab.studies.config import AttackConfig, Strict, StudyConfig
from robustlab.studies.runner import Step, StepContext

VARIANTS = ("AnB", "AnB+", "BnB", "BnB+")


class TrainSettings(Strict):
    """Optimiser settings shared by every model of the study."""

    optimizer: Literal["rmsprop", "adam", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0.0)
    finetune_lr_factor: float = Field(default=0.1, gt=0.0, le=1.0)  # the "+" fine-tuning epochs
    batch_size: int = Field(default=32, ge=1)
    seed: int = Field(default=0, ge=0)


class Config(StudyConfig):
    """The layer-transfer study's settings (``presets/layer-transfer.yaml``)."""

    study: Literal["layer-transfer"]
    arch: str = "tf_efficientnet_lite0"
    pretrained: str = "offline"  # base A's weights ('imagenet' online, e.g. with mobilenetv2_100)
    blocks: list[int] = Field(min_length=1)  # the values of n (0 < n <= number of blocks)
    variants: list[Literal["AnB", "AnB+", "BnB", "BnB+"]] = Field(
        default_factory=lambda: list(VARIANTS)
    )
    base_b_epochs: int = Field(default=4, ge=1)
    epochs: int = Field(default=4, ge=1)  # AnB / BnB (source: 4)
    plus_epochs: int = Field(default=2, ge=1)  # AnB+ / BnB+: train (source: 2) ...
    plus_finetune_epochs: int = Field(default=2, ge=1)  # ... then fine-tune (source: 2)
    train: TrainSettings = TrainSettings()
    fgsm: AttackConfig = AttackConfig(name="fgsm")  # crafted on base A (+ B head)
    pgd: AttackConfig = AttackConfig(name="pgd", settings={"steps": 5})  # white-box on each
    eps: float = Field(default=0.03, ge=0.0, le=1.0)
    eval_limit: int | None = Field(default=None, ge=1)  # first N test images for the attacks

    @field_validator("blocks")
    @classmethod
    def _positive(cls, blocks: list[int]) -> list[int]:
        if any(n < 1 for n in blocks):
            raise UserError(
                f"blocks must be >= 1 (n = 0 copies nothing: that is base B), got {blocks}"
            )
        return sorted(set(blocks))

    def check(self) -> None:
        total = count_blocks(self.arch)
        if max(self.blocks) > total:
            raise UserError(f"blocks: {self.arch} has {total} blocks, got n = {max(self.blocks)}")

    def models(self) -> list[str]:
        """Every model's name in training order: base B, then each variant at each n."""
        names = ["base-B"]
        total = count_blocks(self.arch)
        for n in self.blocks:
            names += [variant_name(v, n) for v in self.variants]
        crafting = variant_name("AnB", total)
        return names if crafting in names else [*names, crafting]


def variant_name(variant: str, n: int) -> str:
    """``('AnB+', 3)`` -> ``'A3B+'``."""
    return variant.replace("n", str(n))


def count_blocks(arch: str) -> int:
    """Number of transferable blocks of ``arch`` (built once without weights, on a tiny input)."""
    from robustlab.models import ModelSpec, create_model

    return len(create_model(ModelSpec(arch=arch, num_classes=2, input_size=32)).blocks())


# -------------------------------------------------------------------------------- steps


def steps(config: Config) -> list[Step]:
    total = count_blocks(config.arch)
    n_train = common.estimated_size(config.data) * config.data.split[0]
    pixels = ((config.data.image_size or 96) / 96) ** 2
    epoch_seconds = 12e-3 * n_train * pixels
    out = [common.data_step(config.data)]
    out.append(_train_step(config, "base-B", 0, "scratch", epoch_seconds * config.base_b_epochs))
    for name in config.models()[1:]:
        variant, n = _parse(name)
        epochs = (
            config.epochs
            if not variant.endswith("+")
            else config.plus_epochs + config.plus_finetune_epochs
        )
        share = 0.3 if n == total and not variant.endswith("+") else 1 - 0.5 * n / total
        out.append(_train_step(config, name, n, variant, 3 + epoch_seconds * epochs * share))
    n_test = min(
        config.eval_limit or 10**9, round(common.estimated_size(config.data) * config.data.split[2])
    )
    out.append(_craft_step(config, total, 2 + n_test * 4e-3 * pixels))
    steps_pgd = int(config.pgd.settings.get("steps", 10))
    per_model = n_test * 4e-3 * pixels * (3 + steps_pgd)
    out.append(_evaluate_step(config, 2 + per_model * len(config.models())))
    return out


def _parse(name: str) -> tuple[str, int]:
    """``'A3B+'`` -> ``('AnB+', 3)``."""
    source, rest = name[0], name[1:]
    digits = rest.rstrip("B+")
    return f"{source}nB" + ("+" if name.endswith("+") else ""), int(digits)


def _model_spec(config: Config, splits: Any, pretrained: str | None) -> Any:
    from robustlab.models import ModelSpec

    image = splits.train.images
    return ModelSpec(
        arch=config.arch,
        num_classes=splits.num_classes,
        in_chans=image.shape[1],
        input_size=image.shape[-1],
        pretrained=pretrained,
    )


def _base_a(ctx: StepContext, config: Config, splits: Any) -> Any:
    from robustlab.models import create_model

    if "base-A" not in ctx.cache:
        spec = _model_spec(config, splits, config.pretrained)
        ctx.cache["base-A"] = create_model(spec).to(ctx.device)
    return ctx.cache["base-A"]


def _train_step(config: Config, name: str, n: int, variant: str, expected: float) -> Step:
    """Build ``name`` (copy n blocks from A or base B), train it with ``fit``, save a checkpoint."""

    def run(ctx: StepContext) -> dict[str, Any]:
        import torch

        from robustlab.models import create_model, save_checkpoint, transfer_blocks
        from robustlab.training import TrainConfig, fit
        from robustlab.training.recipe import accuracy

        metrics = common._finished_metrics(ctx.dir)
        if metrics is not None:
            return metrics
        splits = common.splits_for(ctx, config.data)
        base_a = _base_a(ctx, config, splits)
        torch.manual_seed(config.train.seed)
        model = create_model(
            dataclasses.replace(
                _model_spec(config, splits, None),
                mean=_stat(base_a, "mean"),
                std=_stat(base_a, "std"),
            )
        ).to(ctx.device)
        total = len(model.blocks())
        if variant != "scratch":
            source = base_a if variant.startswith("A") else common.load_model(ctx, "base-B")
            transfer_blocks(source, model, n, freeze=not variant.endswith("+"))
        train = common.on_device(ctx, splits.train.images, splits.train.labels)
        val = common.on_device(ctx, splits.val.images, splits.val.labels)
        settings = config.train.model_dump(exclude={"finetune_lr_factor"})
        phases: list[tuple[str, TrainConfig]]
        if variant == "scratch":
            phases = [
                ("train", TrainConfig(strategy="scratch", epochs=config.base_b_epochs, **settings))
            ]
        elif not variant.endswith("+"):
            # n = all: only the head trains, on features computed once.
            strategy = "frozen" if n == total else "scratch"
            phases = [("train", TrainConfig(strategy=strategy, epochs=config.epochs, **settings))]
        else:
            finetune = {**settings, "lr": config.train.lr * config.train.finetune_lr_factor}
            phases = [
                ("train", TrainConfig(strategy="scratch", epochs=config.plus_epochs, **settings)),
                (
                    "finetune",
                    TrainConfig(strategy="scratch", epochs=config.plus_finetune_epochs, **finetune),
                ),
            ]
        history = []
        for phase, train_config in phases:
            for record in fit(
                model, train, val, train_config, state_dir=ctx.dir / phase, progress=ctx.progress
            ):
                history.append({**record, "stage": phase})
        model.eval()
        metrics = {
            f"{split}_accuracy": accuracy(model, part.images, part.labels, config.eval_batch_size)
            for split, part in splits.items()
        }
        metrics |= {"epochs_run": len(history), "blocks_copied": n, "variant": variant}
        write_json(ctx.dir / "history.json", history)
        save_checkpoint(
            ctx.dir,
            model,
            {
                "classes": list(splits.classes),
                "data": config.data.spec().to_dict(),
                "metrics": metrics,
            },
        )
        for phase, _ in phases:  # the final weights are saved: the resumable states can go
            (ctx.dir / phase / "train_state.pt").unlink(missing_ok=True)
        return metrics

    return Step(common.train_step_name(name), f"train {name}", run, expected)


def _stat(model: Any, name: str) -> tuple[float, ...]:
    return tuple(float(v) for v in getattr(model.preprocess, name).flatten())


def _craft_step(config: Config, total: int, expected: float) -> Step:
    """FGSM adversarial test set crafted with base A's loss (A's frozen features + B head)."""
    crafter = variant_name("AnB", total)

    def run(ctx: StepContext) -> dict[str, Any]:
        from safetensors.torch import save_file

        x, y = common.on_device(ctx, *common.test_images(ctx, config.data, config.eval_limit))
        model = common.load_model(ctx, crafter)
        attack = config.fgsm.build(eps=config.eps)
        x_adv = [
            attack(model, x[i : i + config.eval_batch_size], y[i : i + config.eval_batch_size])
            for i in range(0, len(x), config.eval_batch_size)
        ]
        import torch

        with atomic_path(ctx.dir / "adversarials.safetensors") as tmp:
            tensors = {"x_adv": torch.cat(x_adv), "y": y}
            save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        return {"crafted_on": crafter, "attack": config.fgsm.name, "eps": config.eps, "n": len(x)}

    return Step("craft-fgsm", f"craft FGSM test set on {crafter}", run, expected)


def _evaluate_step(config: Config, expected: float) -> Step:
    """Natural, FGSM-from-A and white-box PGD accuracy of every model."""

    def run(ctx: StepContext) -> dict[str, Any]:
        from safetensors.torch import load_file

        from robustlab.training.recipe import accuracy

        x, y = common.on_device(ctx, *common.test_images(ctx, config.data, config.eval_limit))
        x_adv = load_file(str(ctx.step_dir("craft-fgsm") / "adversarials.safetensors"))["x_adv"]
        pgd = config.pgd.build(eps=config.eps)
        rows = {}
        for name in config.models():
            model = common.load_model(ctx, name)
            adv_pgd = [
                pgd(model, x[i : i + config.eval_batch_size], y[i : i + config.eval_batch_size])
                for i in range(0, len(x), config.eval_batch_size)
            ]
            import torch

            rows[name] = {
                "natural": accuracy(model, x, y, config.eval_batch_size),
                "fgsm_from_A": accuracy(model, x_adv, y, config.eval_batch_size),
                "pgd_white_box": accuracy(model, torch.cat(adv_pgd), y, config.eval_batch_size),
            }
        write_json(ctx.dir / "accuracy.json", rows)
        return {"n": len(x), "eps": config.eps, "accuracy": rows}

    return Step("evaluate", "evaluate every model (natural, FGSM from A, PGD)", run, expected)


# -------------------------------------------------------------------------------- report


def summary(config: Config, results: Mapping[str, Any]) -> dict[str, Any]:
    return {"accuracy": results.get("evaluate", {}).get("accuracy", {})}


def _curves_by_variant(
    config: Config, rows: Mapping[str, Any], key: str
) -> dict[str, list[float | None]]:
    return {
        variant: [rows.get(variant_name(variant, n), {}).get(key) for n in config.blocks]
        for variant in config.variants
    }


def plot_against_n(
    config: Config, rows: Mapping[str, Any], keys: Sequence[tuple[str, str]], path: Path, title: str
) -> Path:
    """Accuracy vs n, one line per variant (and metric); base B as a horizontal line."""
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = {
        "AnB": ("tab:red", "-"),
        "AnB+": ("tab:red", "--"),
        "BnB": ("tab:blue", "-"),
        "BnB+": ("tab:blue", "--"),
    }
    markers = ["o", "s", "^"]
    for k, (key, label) in enumerate(keys):
        for variant, values in _curves_by_variant(config, rows, key).items():
            colour, line = styles[variant]
            ys = [math.nan if v is None else v for v in values]
            ax.plot(
                config.blocks,
                ys,
                color=colour,
                linestyle=line,
                marker=markers[k % 3],
                label=f"{variant} {label}".strip(),
            )
        base = rows.get("base-B", {}).get(key)
        if base is not None:
            ax.axhline(
                base,
                color="0.4",
                linestyle=(":", "-.", "--")[k % 3],
                linewidth=1,
                label=f"base B {label}".strip(),
            )
    ax.set_xlabel("n (blocks copied from the base)")
    ax.set_ylabel("accuracy")
    ax.set_xticks(config.blocks)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, ncol=2)
    ax.set_title(title, fontsize=11)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def report(config: Config, results: Mapping[str, Any], run_dir: Path) -> Any:
    from robustlab.reporting import Figure, ReportSpec, Section, Table

    total = count_blocks(config.arch)
    evaluation = results.get("evaluate", {})
    rows = evaluation.get("accuracy", {})
    figures_dir = run_dir / "evaluate"
    figures = []
    if rows:
        plot_against_n(
            config,
            rows,
            [("natural", "")],
            figures_dir / "transfer_performance.png",
            "Transfer performance: natural test accuracy vs n",
        )
        plot_against_n(
            config,
            rows,
            [("fgsm_from_A", "FGSM from A"), ("pgd_white_box", "PGD white-box")],
            figures_dir / "adversarial_robustness.png",
            f"Adversarial robustness vs n (ε = {config.eps:g})",
        )
        figures = [
            Figure(
                "evaluate/transfer_performance.png",
                "The source's first plot: transfer performance against n",
            ),
            Figure(
                "evaluate/adversarial_robustness.png",
                "The source's second plot: adversarial accuracy against n",
            ),
        ]
    table_rows = []
    for name in config.models():
        train = results.get(common.train_step_name(name), {})
        row = rows.get(name, {})
        table_rows.append(
            [
                name,
                train.get("epochs_run"),
                train.get("val_accuracy"),
                row.get("natural"),
                row.get("fgsm_from_A"),
                row.get("pgd_white_box"),
            ]
        )
    data = results.get("data", {})
    sizes = data.get("sizes", {})
    text = [
        "Source: a MobileNetV2 layer-transfer study. Base A is ImageNet-pretrained; base B is "
        "trained on the target set; AnB copies A's first n blocks frozen and re-initialises the "
        "rest (4 epochs); AnB+ copies them trainable (2 epochs, then 2 of fine-tuning); an FGSM "
        "test set is crafted with base A's loss; natural and adversarial accuracy are plotted against n.",
        f"Here: base A = ImageNet {config.arch} ({config.pretrained} weights), which has {total} "
        f"blocks; B = {config.data.name} task '{data.get('task')}' ({len(data.get('classes', []))} "
        f"classes, {sizes.get('train')}/{sizes.get('val')}/{sizes.get('test')} images at "
        f"{'x'.join(map(str, data.get('image_shape', [])))}). The source's target set, ImageNet-R, "
        "cannot be downloaded here, so a leaf-disease task stands in for it.",
        f"Base A's own head predicts ImageNet classes, so its loss on B's labels needs a B head: "
        f"the FGSM test set is crafted on {variant_name('AnB', total)}, i.e. A's frozen features "
        "plus a head trained on B (the n = all AnB model). BnB / BnB+ copy from base B instead of "
        f"A. AnB+ / BnB+ train every layer for {config.plus_epochs} epochs, then fine-tune "
        f"{config.plus_finetune_epochs} more at {config.train.finetune_lr_factor:g} x the learning rate. "
        f"Beyond the source: white-box {config.pgd.name} on every model.",
        f"To stay affordable on 2 CPU cores: n in {config.blocks} only, "
        f"{config.data.image_size or 'native'} px images, at most {config.data.limit or 'all'} "
        f"images, attacks on {evaluation.get('n', '?')} test images, ε = {config.eps:g}.",
        *config.notes,
    ]
    sections = [
        Section(
            id="overview",
            title="What this study does",
            text="\n\n".join(text),
            tables=[
                Table(
                    ["model", "epochs", "val acc", "natural acc", "FGSM from A", "PGD white-box"],
                    table_rows,
                    f"Test accuracy of every model (ε = {config.eps:g})",
                )
            ],
            figures=figures,
        )
    ]
    return ReportSpec(
        title=config.title or "Layer-transfer study: AnB / AnB+ / BnB / BnB+",
        subtitle=f"{config.arch}, B = {config.data.name}",
        sections=sections,
    )
