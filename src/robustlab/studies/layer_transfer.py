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
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from robustlab.errors import UserError
from robustlab.io import atomic_path, write_json
from robustlab.studies import common
from robustlab.studies.config import AttackConfig, Strict, StudyConfig
from robustlab.studies.protocol import StepResults, Study
from robustlab.studies.runner import Step, StepContext, Work

if TYPE_CHECKING:
    from robustlab.attacks import SweepResult
    from robustlab.reporting import ReportSpec

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


@functools.cache
def count_blocks(arch: str) -> int:
    """Number of transferable blocks of ``arch`` (built once without weights, on a tiny input)."""
    from robustlab.models import ModelSpec, create_model

    return len(create_model(ModelSpec(arch=arch, num_classes=2, input_size=32)).blocks())


# -------------------------------------------------------------------------------- steps


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


def _train_work(config: Config, variant: str, n: int) -> Work:
    """Image passes to train one model: its epochs, over the share of the network that trains."""
    total = count_blocks(config.arch)
    if variant == "scratch":
        epochs, share = config.base_b_epochs, 1.0
    elif variant.endswith("+"):
        epochs, share = config.plus_epochs + config.plus_finetune_epochs, 1 - 0.5 * n / total
    else:  # copied blocks frozen; n = all trains the head alone, on cached features
        epochs, share = config.epochs, 0.3 if n == total else 1 - 0.5 * n / total
    n_train = common.estimated_size(config.data) * config.data.split[0]
    passes = n_train * common.pixel_scale(config.data.image_size) * epochs * share
    return Work(f"train {config.arch}", passes)


def _train_step(config: Config, name: str, n: int, variant: str, work: Work) -> Step:
    """Build ``name`` (n blocks copied from base A or base B) and train it with ``train_run``."""
    all_blocks = n == count_blocks(config.arch)

    def run(ctx: StepContext) -> dict[str, Any]:
        from robustlab.models import transfer_blocks
        from robustlab.training import train_run

        metrics = common._finished_metrics(ctx.dir)
        if metrics is None:
            splits = common.splits_for(ctx, config.data)
            base_a = _base_a(ctx, config, splits)

            def copy_blocks(model: Any) -> None:
                source = base_a if variant.startswith("A") else common.load_model(ctx, "base-B")
                transfer_blocks(source, model, n, freeze=not variant.endswith("+"))

            model_spec = dataclasses.replace(
                _model_spec(config, splits, None),
                mean=_stat(base_a, "mean"),
                std=_stat(base_a, "std"),
            )
            first, *then = _phases(config, variant, all_blocks)
            metrics = train_run(
                ctx.dir,
                config.data.spec(),
                model_spec,
                first.config,
                init=None if variant == "scratch" else copy_blocks,
                then=then,
                extra={"transfer": {"variant": variant, "blocks": n}},
                data_dir=ctx.data_dir,
                progress=ctx.progress,
                device=ctx.device,
                on_epoch=ctx.epoch_callback(),
            )
        # Timings live in the runner's records; results hold only what a rerun reproduces.
        kept = {key: value for key, value in metrics.items() if key != "seconds"}
        return kept | {"blocks_copied": n, "variant": variant}

    return Step(common.train_step_name(name), f"train {name}", run, work=work)


def _phases(config: Config, variant: str, all_blocks: bool) -> list[Any]:
    """The training phases of a variant: base B and AnB train once, AnB+ then fine-tunes."""
    from robustlab.training import TrainConfig
    from robustlab.training.recipe import Phase

    settings = config.train.model_dump(exclude={"finetune_lr_factor"})
    if variant == "scratch":
        return [
            Phase("train", TrainConfig(strategy="scratch", epochs=config.base_b_epochs, **settings))
        ]
    if not variant.endswith("+"):
        # n = all: only the head trains, on features computed once.
        strategy = "frozen" if all_blocks else "scratch"
        return [Phase("train", TrainConfig(strategy=strategy, epochs=config.epochs, **settings))]
    finetune = {**settings, "lr": config.train.lr * config.train.finetune_lr_factor}
    return [
        Phase("train", TrainConfig(strategy="scratch", epochs=config.plus_epochs, **settings)),
        Phase(
            "finetune",
            TrainConfig(strategy="scratch", epochs=config.plus_finetune_epochs, **finetune),
        ),
    ]


def _stat(model: Any, name: str) -> tuple[float, ...]:
    return tuple(float(v) for v in getattr(model.preprocess, name).flatten())


def _craft_step(config: Config, total: int, work: Work) -> Step:
    """FGSM adversarial test set crafted with base A's loss (A's frozen features + B head)."""
    crafter = variant_name("AnB", total)

    def run(ctx: StepContext) -> dict[str, Any]:
        from safetensors.torch import save_file

        x, y = common.test_images(ctx, config.data, config.eval_limit)
        crafted = _attack_every_image(
            config, config.fgsm, common.load_model(ctx, crafter), x, y, ctx.device
        )
        adversarials = crafted.adversarials[0]  # type: ignore[index]
        with atomic_path(ctx.dir / "adversarials.safetensors") as tmp:
            save_file({"x_adv": adversarials.contiguous(), "y": y.contiguous()}, str(tmp))
        return {"crafted_on": crafter, "attack": config.fgsm.name, "eps": config.eps, "n": len(x)}

    return Step("craft-fgsm", f"craft FGSM test set on {crafter}", run, work=work)


def _attack_every_image(
    config: Config, attack: AttackConfig, model: Any, x: Any, y: Any, device: str
) -> SweepResult:
    """``attack`` at ``config.eps`` on every image, the clean mistakes too (not worst case)."""
    from robustlab.attacks import sweep_dataset

    return sweep_dataset(
        attack.build(eps=config.eps),
        model,
        x,
        y,
        [config.eps],
        batch_size=config.eval_batch_size,
        worst_case=False,
        device=device,
    )


def _evaluate_step(config: Config, work: Work) -> Step:
    """Natural, FGSM-from-A and white-box PGD accuracy of every model."""

    def run(ctx: StepContext) -> dict[str, Any]:
        from safetensors.torch import load_file

        from robustlab.training.recipe import accuracy

        x, y = common.on_device(ctx, *common.test_images(ctx, config.data, config.eval_limit))
        x_adv = load_file(str(ctx.step_dir("craft-fgsm") / "adversarials.safetensors"))["x_adv"]
        accuracies = {}
        for name in config.models():
            model = common.load_model(ctx, name)
            white_box = _attack_every_image(config, config.pgd, model, x, y, ctx.device)
            accuracies[name] = {
                "natural": accuracy(model, x, y, config.eval_batch_size),
                "fgsm_from_A": accuracy(model, x_adv, y, config.eval_batch_size),
                "pgd_white_box": white_box.accuracy()[0],
            }
        write_json(ctx.dir / "accuracy.json", accuracies)
        return {"n": len(x), "eps": config.eps, "accuracy": accuracies}

    title = "evaluate every model (natural, FGSM from A, PGD)"
    return Step("evaluate", title, run, work=work)


# -------------------------------------------------------------------------------- report


# How the source drew each variant: A red, B blue; the "+" (fine-tuned) variants dashed.
VARIANT_STYLES = {
    "AnB": {"color": "tab:red", "linestyle": "-"},
    "AnB+": {"color": "tab:red", "linestyle": "--"},
    "BnB": {"color": "tab:blue", "linestyle": "-"},
    "BnB+": {"color": "tab:blue", "linestyle": "--"},
}


def plot_against_n(
    config: Config, rows: Mapping[str, Any], keys: Sequence[tuple[str, str]], path: Path, title: str
) -> Path:
    """Accuracy vs n, one line per variant (and metric); base B as a horizontal line."""
    from robustlab.reporting.plots import Line, plot_lines

    lines = []
    for k, (key, label) in enumerate(keys):
        marker = ("o", "s", "^")[k % 3]
        lines += [
            Line(
                [rows.get(variant_name(variant, n), {}).get(key) for n in config.blocks],
                f"{variant} {label}".strip(),
                x=config.blocks,
                style={**VARIANT_STYLES[variant], "marker": marker},
            )
            for variant in config.variants
        ]
        base_b = rows.get("base-B", {}).get(key)
        if base_b is not None:
            style = {"color": "0.4", "linestyle": (":", "-.", "--")[k % 3]}
            lines.append(Line([base_b], f"base B {label}".strip(), style=style))
    xlabel = "n (blocks copied from the base)"
    return plot_lines(lines, path, title=title, xlabel=xlabel, xticks=config.blocks)


def _plot_figures(config: Config, accuracies: Mapping[str, Any], run_dir: Path) -> list[Any]:
    """The source's two plots: natural, then adversarial accuracy against n."""
    from robustlab.reporting import Figure

    adversarial = [("fgsm_from_A", "FGSM from A"), ("pgd_white_box", "PGD white-box")]
    plots = [
        (
            "transfer_performance",
            [("natural", "")],
            "Transfer performance: natural test accuracy vs n",
            "The source's first plot: transfer performance against n",
        ),
        (
            "adversarial_robustness",
            adversarial,
            f"Adversarial robustness vs n (ε = {config.eps:g})",
            "The source's second plot: adversarial accuracy against n",
        ),
    ]
    figures = []
    for stem, keys, title, caption in plots:
        plot_against_n(config, accuracies, keys, run_dir / "evaluate" / f"{stem}.png", title)
        figures.append(Figure(f"evaluate/{stem}.png", caption))
    return figures


def _accuracy_table(config: Config, results: StepResults) -> Any:
    """Per model: epochs and val accuracy of its training, then its test accuracies."""
    from robustlab.reporting import Table

    accuracies = results.get("evaluate", {}).get("accuracy", {})
    rows = []
    for name in config.models():
        train = results.get(common.train_step_name(name), {})
        tested = accuracies.get(name, {})
        rows.append(
            [name, train.get("epochs_run"), train.get("val_accuracy")]
            + [tested.get(key) for key in ("natural", "fgsm_from_A", "pgd_white_box")]
        )
    header = ["model", "epochs", "val acc", "natural acc", "FGSM from A", "PGD white-box"]
    return Table(header, rows, f"Test accuracy of every model (ε = {config.eps:g})")


def _overview(config: Config, results: StepResults) -> list[str]:
    """The source's design, what differs here and why, as paragraphs."""
    total = count_blocks(config.arch)
    evaluation = results.get("evaluate", {})
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
    return text


class LayerTransferStudy(Study[Config]):
    """The study ``layer-transfer`` (``presets/layer-transfer.yaml``)."""

    kind = "layer-transfer"
    config_type = Config

    def check(self, config: Config) -> None:
        total = count_blocks(config.arch)
        if max(config.blocks) > total:
            raise UserError(
                f"blocks: {config.arch} has {total} blocks, got n = {max(config.blocks)}"
            )

    def steps(self, config: Config) -> list[Step]:
        total = count_blocks(config.arch)
        out = [common.data_step(config.data)]
        for name in config.models():
            variant, n = ("scratch", 0) if name == "base-B" else _parse(name)
            out.append(_train_step(config, name, n, variant, _train_work(config, variant, n)))
        n_test = common.test_size(config.data, config.eval_limit)
        image = common.pixel_scale(config.data.image_size)
        kind = f"attack {config.arch}"
        out.append(_craft_step(config, total, Work(kind, 2 * n_test * image)))
        pgd_steps = config.pgd.build(eps=config.eps).settings().get("steps", 1)
        per_model = (3 + pgd_steps) * n_test * image  # scoring x 3, then PGD
        out.append(_evaluate_step(config, Work(kind, per_model * len(config.models()))))
        return out

    def summary(self, config: Config, results: StepResults) -> dict[str, Any]:
        return {"accuracy": results.get("evaluate", {}).get("accuracy", {})}

    def report(self, config: Config, results: StepResults, run_dir: Path) -> ReportSpec:
        from robustlab.reporting import ReportSpec, Section

        accuracies = results.get("evaluate", {}).get("accuracy", {})
        section = Section(
            id="overview",
            title="What this study does",
            text="\n\n".join(_overview(config, results)),
            tables=[_accuracy_table(config, results)],
            figures=_plot_figures(config, accuracies, run_dir) if accuracies else [],
        )
        return ReportSpec(
            title=config.title or "Layer-transfer study: AnB / AnB+ / BnB / BnB+",
            subtitle=f"{config.arch}, B = {config.data.name}",
            sections=[section],
        )
