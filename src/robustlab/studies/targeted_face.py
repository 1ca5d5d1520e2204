"""The targeted-face study (source 003): learn an additive filter that turns "woman" into "man".

Source: a small gender CNN on 48x48 grey faces; a filter DX learned by gradient descent
(lr 0.1, 1000 iterations) on the target-class cross-entropy of model(X + DX), then continued
with an L2 penalty beta * l2_loss(DX) (beta = 0.5) for a less visible filter; the filter, the
three images and their scores. Beyond the source: over hundreds of faces, the success rate and
the mean ||DX|| for a sweep of beta values.

Here the CNN (``face-cnn``) is trained on UTKFace (``utkface-gender``) in grey at 48x48. Pixels
are in [0, 1] and the model normalises as the source did ((grey - 128) / 256), so lr and beta
carry over; the filtered image is kept in [0, 1] (``clip``) unless the config says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from robustlab.data.split import class_index
from robustlab.errors import UserError
from robustlab.io import write_json
from robustlab.studies import common
from robustlab.studies.config import AttackConfig, ModelConfig, Strict, StudyConfig
from robustlab.studies.protocol import StepResults, Study
from robustlab.studies.runner import Step, StepContext, Work

if TYPE_CHECKING:
    from robustlab.reporting import ReportSpec, Section

# The source's scores (logits) of its one face: man, woman.
SOURCE_SCORES = {
    "original": (-0.786289, 1.691635),
    "adversarial (beta = 0)": (4.287148, -4.397744),
    "adversarial with L2 (beta = 0.5)": (1.876860, -1.570869),
}


class SweepConfig(Strict):
    """Success rate and filter size against beta, over many faces of the source class."""

    betas: list[float] = Field(min_length=1)
    limit: int | None = Field(default=300, ge=1)  # faces (test split, source class, correct)
    iterations: int = Field(default=300, ge=1)
    batch_size: int = Field(default=300, ge=1)


class Config(StudyConfig):
    """The targeted-face study's settings (``presets/targeted-face.yaml``)."""

    study: Literal["targeted-face"]
    model: ModelConfig
    source_class: int | str = 1  # utkface-gender: 1 = female
    target_class: int | str = 0  # utkface-gender: 0 = male
    face: int | None = Field(default=None, ge=0)  # test index; None = first correct source face
    attack: AttackConfig = AttackConfig(
        name="filter", settings={"iterations": 1000, "lr": 0.1, "penalty": "l2_loss"}
    )
    betas: list[float] = Field(
        default_factory=lambda: [0.0, 0.5], min_length=1
    )  # one face, in turn
    sweep: SweepConfig | None = None


# -------------------------------------------------------------------------------- steps


def _filter(config: Config, **settings: Any) -> Any:
    """The configured filter attack, built by its ``AttackConfig``, with some settings replaced."""
    replaced = {**config.attack.settings, **settings}
    return config.attack.model_copy(update={"settings": replaced}).build()


def _classes(ctx: StepContext, config: Config) -> tuple[Any, int, int]:
    """The splits, and the indices of the source and target classes."""
    splits = common.splits_for(ctx, config.data)
    source_class = class_index(config.source_class, splits.classes, "source_class")
    target_class = class_index(config.target_class, splits.classes, "target_class")
    if source_class == target_class:
        raise UserError("source_class and target_class must differ")
    return splits, source_class, target_class


def _correct_source_faces(ctx: StepContext, config: Config, source_class: int) -> Any:
    """Test indices of faces of the source class that the model classifies correctly."""
    import torch

    from robustlab.evaluation import predict_logits

    test = common.splits_for(ctx, config.data).test
    model = common.load_model(ctx, config.model.name)
    pred = predict_logits(model, test.images, config.eval_batch_size).argmax(1)
    return torch.nonzero((test.labels == source_class) & (pred == source_class)).flatten()


def _chosen_face(ctx: StepContext, config: Config, source_class: int, n_test: int) -> int:
    """The configured test face, else the first source face the model classifies correctly."""
    if config.face is not None:
        if config.face >= n_test:
            raise UserError(f"face: index {config.face} past the {n_test} test images")
        return config.face
    candidates = _correct_source_faces(ctx, config, source_class)
    if len(candidates) == 0:
        raise UserError("no test face of the source class is classified correctly")
    return int(candidates[0])


def _one_face(config: Config) -> Any:
    def run(ctx: StepContext) -> dict[str, Any]:
        import torch

        from robustlab.reporting import plots

        splits, source_class, target_class = _classes(ctx, config)
        index = _chosen_face(ctx, config, source_class, len(splits.test))
        x, y = common.on_device(
            ctx, splits.test.images[index : index + 1], splits.test.labels[index : index + 1]
        )
        model = common.load_model(ctx, config.model.name)
        with torch.no_grad():
            scores = [("original", model(x)[0].tolist(), 0.0)]
        images = [x[0]]
        delta = None
        for beta in config.betas:
            # Each beta continues from the previous filter, as the source did.
            result = _filter(config, beta=beta).optimise(
                model, x, y, torch.tensor([target_class], device=x.device), init=delta
            )
            delta = result.delta
            scores.append((f"beta = {beta:g}", result.logits[0].tolist(), float(result.l2[0])))
            images.append(result.x_adv[0])
            title = f"learned filter, β = {beta:g}"
            plots.plot_filter(delta[0].cpu().numpy(), ctx.dir / f"filter_beta{beta:g}.png", title=title)
        classes = list(splits.classes)
        rows = [_score_row(classes, name, logits, l2) for name, logits, l2 in scores]
        titles = [f"{row['image']}\npredicted {row['predicted']}" for row in rows]
        plots.plot_images([image.cpu().numpy() for image in images], titles, ctx.dir / "faces.png")
        result = {
            "index": index,
            "true": classes[int(y[0])],
            "target": classes[target_class],
            "betas": config.betas,
            "images": rows,
        }
        write_json(ctx.dir / "one_face.json", result)
        return result

    return run


def _score_row(classes: list[str], image: str, logits: list[float], l2: float) -> dict[str, Any]:
    """One image's scores (logits) by class, its predicted class and its filter's norm."""
    predicted = classes[max(range(len(logits)), key=logits.__getitem__)]
    scores = dict(zip(classes, logits, strict=True))
    return {"image": image, "scores": scores, "predicted": predicted, "l2": l2}


def _sweep(config: Config) -> Any:
    assert config.sweep is not None
    sweep = config.sweep

    def run(ctx: StepContext) -> dict[str, Any]:
        splits, source_class, target_class = _classes(ctx, config)
        test = splits.test
        model = common.load_model(ctx, config.model.name)
        faces = _correct_source_faces(ctx, config, source_class)[: sweep.limit]
        if len(faces) == 0:
            raise UserError("no test face of the source class is classified correctly")
        x, y = common.on_device(ctx, test.images[faces], test.labels[faces])
        rows = []
        for beta in sweep.betas:
            attack = _filter(config, beta=beta, iterations=sweep.iterations)
            filtered = _filter_every_face(attack, model, x, y, target_class, sweep.batch_size)
            ok, norms, peaks = filtered["success"], filtered["l2"], filtered["linf"]
            rows.append(
                {
                    "beta": beta,
                    "success_rate": float(ok.float().mean()),
                    "mean_l2": float(norms.mean()),
                    "median_l2": float(norms.median()),
                    "mean_l2_successful": float(norms[ok].mean()) if ok.any() else None,
                    "mean_linf": float(peaks.mean()),
                }
            )
        plot_sweep(rows, ctx.dir / "beta_sweep.png")
        result = {"faces": len(x), "iterations": sweep.iterations, "rows": rows}
        write_json(ctx.dir / "beta_sweep.json", result)
        return result

    return run


def _filter_every_face(
    attack: Any, model: Any, x: Any, y: Any, target_class: int, batch_size: int
) -> dict[str, Any]:
    """Learn a filter for each face, ``batch_size`` at a time: per face ``success`` (reaches
    ``target_class``), ``l2`` and ``linf`` (of the filter) as ``(N,)`` tensors."""
    import torch

    from robustlab.distributed import map_chunks

    def run_batch(part: slice) -> dict[str, Any]:
        goal = torch.full_like(y[part], target_class)
        result = attack.optimise(model, x[part], y[part], goal)
        linf = result.delta.flatten(1).abs().amax(1)
        return {"success": result.success.cpu(), "l2": result.l2.cpu(), "linf": linf.cpu()}

    parts = map_chunks(run_batch, len(x), batch_size)
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def plot_sweep(rows: list[Mapping[str, Any]], path: Path) -> Path:
    """Success rate (left axis) and mean ||delta||_2 (right axis) against beta."""
    from robustlab.reporting.plots import Line, plot_lines

    betas = [row["beta"] for row in rows]
    success = [row["success_rate"] for row in rows]
    size = [row["mean_l2"] for row in rows]
    return plot_lines(
        [
            Line(success, "success rate", x=betas, style={"color": "b", "marker": "o"}),
            Line(size, "mean ||Δ||₂", x=betas, style={"color": "r", "marker": "s"}, right=True),
        ],
        path,
        title="Targeted filter attack: success and filter size against β",
        xlabel="β (weight of the L2 penalty)",
        ylabel="success rate (classified as the target)",
        right_label="mean ||Δ||₂ (pixel units)",
    )


# -------------------------------------------------------------------------------- report


def _pct(value: Any) -> str:
    return "?" if value is None else f"{value:.1%}"


def _overview_section(config: Config, results: StepResults) -> Section:
    from robustlab.reporting import Section

    data = results.get("data", {})
    train = results.get(common.train_step_name(config.model.name), {})
    settings = config.attack.build().settings()
    intro = [
        "Source: 'Mislead a neural network' - a small CNN (conv 3, 6, 12 filters of 5x5, each "
        "max-pooled, then a dense layer) classifies 48x48 grey faces by gender (88.64 % test "
        "accuracy); a filter DX learned by gradient descent (lr 0.1, 1000 iterations) on the "
        "cross-entropy towards 'man' makes a woman's face read as a man; a second run with an L2 "
        "penalty (beta = 0.5, continuing from the first filter) gives a less visible filter.",
        f"Here: {config.model.arch} trained from scratch on {config.data.name} "
        f"({'x'.join(map(str, data.get('image_shape', [])))}, classes {', '.join(data.get('classes', []))}), "
        f"test accuracy {_pct(train.get('test_accuracy'))}. Filter attack settings: iterations "
        f"{settings['iterations']}, lr {settings['lr']:g}, penalty '{settings['penalty']}' "
        "('l2_loss' = sum(DX²)/2 as the source's tf.nn.l2_loss), clip "
        f"{settings['clip']} (true keeps X + DX a valid image; the source did not clip).",
        *config.notes,
    ]
    return Section(id="overview", title="What this study does", text="\n\n".join(intro))


def _one_face_section(face: Mapping[str, Any]) -> Section:
    """The scores of one face before and after each filter, beside the source's."""
    from robustlab.reporting import Figure, Section, Table

    classes = list(face["images"][0]["scores"])
    rows = [
        [row["image"], *[row["scores"][c] for c in classes], row["predicted"], row["l2"]]
        for row in face["images"]
    ]
    source_rows = [[name, *scores] for name, scores in SOURCE_SCORES.items()]
    caption = "Original, then the filtered image after each β (as in the source)"
    figures = [Figure("one-face/faces.png", caption)]
    figures += [
        Figure(f"one-face/filter_beta{beta:g}.png", f"The learned filter after β = {beta:g}")
        for beta in face["betas"]
    ]
    betas = ", ".join(f"{b:g}" for b in face["betas"])
    return Section(
        id="one-face",
        title=f"One face: {face['true']} → {face['target']}",
        text=f"Test image {face['index']}, true class {face['true']}; filters learned in turn "
        f"for β = {betas}, each starting from the last.",
        tables=[
            Table(
                ["image", *[f"score {c}" for c in classes], "predicted", "||Δ||₂"],
                rows,
                "Scores (logits) of the model",
            ),
            Table(["source image", "score man", "score woman"], source_rows, "The source's scores"),
        ],
        figures=figures,
    )


SWEEP_COLUMNS = {  # beta-sweep result key -> table header
    "beta": "β",
    "success_rate": "success rate",
    "mean_l2": "mean ||Δ||₂",
    "median_l2": "median ||Δ||₂",
    "mean_l2_successful": "mean ||Δ||₂ (successes)",
    "mean_linf": "mean ||Δ||∞",
}


def _sweep_section(sweep: Mapping[str, Any]) -> Section:
    """Success rate and filter size against beta over many faces."""
    from robustlab.reporting import Figure, Section, Table

    rows = [[row[key] for key in SWEEP_COLUMNS] for row in sweep["rows"]]
    figure = Figure("beta-sweep/beta_sweep.png", "Success rate and mean filter norm against β")
    return Section(
        id="beta-sweep",
        title="Beyond the source: success and filter size against β",
        text=f"{sweep['faces']} test faces of the source class that the model classifies "
        f"correctly, {sweep['iterations']} iterations per β, each from a zero filter.",
        tables=[Table(list(SWEEP_COLUMNS.values()), rows)],
        figures=[figure],
    )


class TargetedFaceStudy(Study[Config]):
    """The study ``targeted-face`` (``presets/targeted-face.yaml``)."""

    kind = "targeted-face"
    config_type = Config

    def check(self, config: Config) -> None:
        if config.attack.name != "filter":
            raise UserError(
                f"attack: this study learns a filter; use name 'filter', got '{config.attack.name}'"
            )
        if "beta" in config.attack.settings:
            raise UserError("attack.settings.beta: set the betas with 'betas' and 'sweep.betas'")
        settings = config.attack.build().settings()
        # Plain gradient descent on beta * P(delta) shrinks delta by (1 - lr * beta * c) per step,
        # c = 1 for 'l2_loss' (sum/2) and 2 for 'squared': it diverges once that leaves (-1, 1).
        c = 1.0 if settings["penalty"] == "l2_loss" else 2.0
        limit = 2.0 / (settings["lr"] * c)
        for field, betas in (
            ("betas", config.betas),
            ("sweep.betas", config.sweep.betas if config.sweep else []),
        ):
            for beta in betas:
                if beta >= limit:
                    raise UserError(
                        f"{field}: beta {beta:g} with lr {settings['lr']:g} and penalty "
                        f"'{settings['penalty']}' makes gradient descent diverge; use beta < {limit:g}"
                    )

    def steps(self, config: Config) -> list[Step]:
        image = common.pixel_scale(config.data.image_size)
        kind = f"attack {config.model.arch}"
        one_face = config.attack.build().settings()["iterations"] * len(config.betas)
        out = [common.data_step(config.data), common.train_step(config.model, config.data)]
        out.append(
            Step(
                "one-face",
                "filter attack on one face",
                _one_face(config),
                work=Work(f"{kind} one image", one_face * image),
            )
        )
        if config.sweep is not None:
            sweep = config.sweep
            faces = common.test_size(config.data, sweep.limit)
            work = Work(kind, sweep.iterations * len(sweep.betas) * faces * image)
            title = f"beta sweep over {sweep.limit or 'all'} faces"
            out.append(Step("beta-sweep", title, _sweep(config), work=work))
        return out

    def summary(self, config: Config, results: StepResults) -> dict[str, Any]:
        face = results.get("one-face", {})
        return {
            "test_accuracy": results.get(common.train_step_name(config.model.name), {}).get(
                "test_accuracy"
            ),
            "one_face": [(row["image"], row["predicted"]) for row in face.get("images", [])],
            "sweep": [
                (row["beta"], row["success_rate"], row["mean_l2"])
                for row in results.get("beta-sweep", {}).get("rows", [])
            ],
        }

    def report(self, config: Config, results: StepResults, run_dir: Path) -> ReportSpec:
        from robustlab.reporting import ReportSpec

        sections = [_overview_section(config, results)]
        if results.get("one-face"):
            sections.append(_one_face_section(results["one-face"]))
        if results.get("beta-sweep"):
            sections.append(_sweep_section(results["beta-sweep"]))
        return ReportSpec(
            title=config.title or "Targeted-face study: a filter that changes the predicted gender",
            subtitle=f"{config.model.arch} on {config.data.name}",
            sections=sections,
        )
