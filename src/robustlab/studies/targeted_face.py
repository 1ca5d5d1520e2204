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
from typing import Any, Literal

from pydantic import Field

from robustlab.errors import UserError
from robustlab.io import atomic_path, write_json
from robustlab.studies import common
from robustlab.studies.config import AttackConfig, ModelConfig, Strict, StudyConfig
from robustlab.studies.runner import Step, StepContext

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

    def check(self) -> None:
        if self.attack.name != "filter":
            raise UserError(
                f"attack: this study learns a filter; use name 'filter', got '{self.attack.name}'"
            )
        if "beta" in self.attack.settings:
            raise UserError("attack.settings.beta: set the betas with 'betas' and 'sweep.betas'")
        settings = self.attack.build().settings()
        # Plain gradient descent on beta * P(delta) shrinks delta by (1 - lr * beta * c) per step,
        # c = 1 for 'l2_loss' (sum/2) and 2 for 'squared': it diverges once that leaves (-1, 1).
        c = 1.0 if settings["penalty"] == "l2_loss" else 2.0
        limit = 2.0 / (settings["lr"] * c)
        for field, betas in (
            ("betas", self.betas),
            ("sweep.betas", self.sweep.betas if self.sweep else []),
        ):
            for beta in betas:
                if beta >= limit:
                    raise UserError(
                        f"{field}: beta {beta:g} with lr {settings['lr']:g} and penalty "
                        f"'{settings['penalty']}' makes gradient descent diverge; use beta < {limit:g}"
                    )


def class_index(classes: tuple[str, ...], wanted: int | str, field: str) -> int:
    """A class given by index or name -> its index (UserError naming ``field`` otherwise)."""
    if isinstance(wanted, int):
        if not 0 <= wanted < len(classes):
            raise UserError(
                f"{field}: class index {wanted} out of range for {len(classes)} classes"
            )
        return wanted
    if wanted not in classes:
        from robustlab.errors import unknown_name

        raise UserError(f"{field}: {unknown_name('class', wanted, classes)}")
    return classes.index(wanted)


# -------------------------------------------------------------------------------- steps


def steps(config: Config) -> list[Step]:
    out = [common.data_step(config.data)]
    out.append(
        common.train_step(
            config.model, config.data, common.train_estimate(config.model, config.data) / 4
        )
    )
    iterations = int(config.attack.settings.get("iterations", 1000))
    out.append(
        Step(
            "one-face",
            "filter attack on one face",
            _one_face(config),
            1 + 2e-3 * iterations * len(config.betas),
        )
    )
    if config.sweep is not None:
        s = config.sweep
        expected = 2 + 1e-4 * s.iterations * len(s.betas) * (s.limit or 300)
        out.append(
            Step(
                "beta-sweep", f"beta sweep over {s.limit or 'all'} faces", _sweep(config), expected
            )
        )
    return out


def _filter(config: Config, **settings: Any) -> Any:
    """The configured filter attack with some settings replaced."""
    from robustlab.attacks import get_attack

    return get_attack("filter", **{**config.attack.settings, **settings})


def _classes(ctx: StepContext, config: Config) -> tuple[Any, int, int]:
    splits = common.splits_for(ctx, config.data)
    source = class_index(splits.classes, config.source_class, "source_class")
    target = class_index(splits.classes, config.target_class, "target_class")
    if source == target:
        raise UserError("source_class and target_class must differ")
    return splits, source, target


def _correct_source_faces(ctx: StepContext, config: Config, source: int) -> Any:
    """Test indices of faces of the source class that the model classifies correctly."""
    import torch

    from robustlab.evaluation import predict_logits

    test = common.splits_for(ctx, config.data).test
    model = common.load_model(ctx, config.model.name)
    pred = predict_logits(model, test.images, config.eval_batch_size).argmax(1)
    return torch.nonzero((test.labels == source) & (pred == source)).flatten()


def _one_face(config: Config) -> Any:
    def run(ctx: StepContext) -> dict[str, Any]:
        import torch

        from robustlab.reporting import plots

        splits, source, target = _classes(ctx, config)
        test = splits.test
        model = common.load_model(ctx, config.model.name)
        if config.face is None:
            candidates = _correct_source_faces(ctx, config, source)
            if len(candidates) == 0:
                raise UserError("no test face of the source class is classified correctly")
            index = int(candidates[0])
        else:
            if config.face >= len(test):
                raise UserError(f"face: index {config.face} past the {len(test)} test images")
            index = config.face
        x, y = common.on_device(ctx, test.images[index : index + 1], test.labels[index : index + 1])
        goal = torch.tensor([target], device=x.device)
        with torch.no_grad():
            scores = [("original", model(x)[0].tolist(), 0.0)]
        images = [x[0]]
        delta = None
        for beta in config.betas:
            # Each beta continues from the previous filter, as the source did.
            attack = _filter(config, beta=beta)
            result = attack.optimise(model, x, y, goal, init=delta)
            delta = result.delta
            scores.append((f"beta = {beta:g}", result.logits[0].tolist(), float(result.l2[0])))
            images.append(result.x_adv[0])
            plots.plot_filter(
                delta[0].cpu().numpy(),
                ctx.dir / f"filter_beta{beta:g}.png",
                title=f"learned filter, β = {beta:g}",
            )
        classes = list(splits.classes)
        titles = [
            f"{name}\npredicted {classes[max(range(len(logits)), key=logits.__getitem__)]}"
            for name, logits, _ in scores
        ]
        plot_faces([img.cpu().numpy() for img in images], titles, ctx.dir / "faces.png")
        rows = [
            {
                "image": name,
                "scores": dict(zip(classes, logits, strict=True)),
                "predicted": classes[max(range(len(logits)), key=logits.__getitem__)],
                "l2": l2,
            }
            for name, logits, l2 in scores
        ]
        result = {
            "index": index,
            "true": classes[int(y[0])],
            "target": classes[target],
            "betas": config.betas,
            "images": rows,
        }
        write_json(ctx.dir / "one_face.json", result)
        return result

    return run


def plot_faces(images: list[Any], titles: list[str], path: Path) -> Path:
    """Images (C, H, W) in [0, 1] side by side, grey when single-channel."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(images), 3.4))
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(images)))
    for ax, image, title in zip(axes, images, titles, strict=True):
        array = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
        shown = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
        ax.imshow(shown, cmap="gray" if array.shape[0] == 1 else None, vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def _sweep(config: Config) -> Any:
    assert config.sweep is not None
    sweep = config.sweep

    def run(ctx: StepContext) -> dict[str, Any]:
        import torch

        _, source, target = _classes(ctx, config)
        test = common.splits_for(ctx, config.data).test
        model = common.load_model(ctx, config.model.name)
        faces = _correct_source_faces(ctx, config, source)[: sweep.limit]
        if len(faces) == 0:
            raise UserError("no test face of the source class is classified correctly")
        x, y = common.on_device(ctx, test.images[faces], test.labels[faces])
        rows = []
        for beta in sweep.betas:
            attack = _filter(config, beta=beta, iterations=sweep.iterations)
            success, l2, linf = [], [], []
            for start in range(0, len(x), sweep.batch_size):
                xb, yb = x[start : start + sweep.batch_size], y[start : start + sweep.batch_size]
                result = attack.optimise(model, xb, yb, torch.full_like(yb, target))
                success.append(result.success)
                l2.append(result.l2)
                linf.append(result.delta.flatten(1).abs().amax(1))
            ok, norms, peaks = torch.cat(success), torch.cat(l2), torch.cat(linf)
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


def plot_sweep(rows: list[Mapping[str, Any]], path: Path) -> Path:
    """Success rate (left axis) and mean ||delta||_2 (right axis) against beta."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    betas = [row["beta"] for row in rows]
    fig = Figure(figsize=(7.0, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(betas, [row["success_rate"] for row in rows], "b-o", label="success rate")
    ax.set_xlabel("β (weight of the L2 penalty)")
    ax.set_ylabel("success rate (classified as the target)", color="b")
    ax.set_ylim(-0.02, 1.02)
    other = ax.twinx()
    other.plot(betas, [row["mean_l2"] for row in rows], "r--s", label="mean ||Δ||₂")
    other.set_ylabel("mean ||Δ||₂ (pixel units)", color="r")
    ax.grid(alpha=0.3)
    ax.set_title("Targeted filter attack: success and filter size against β", fontsize=11)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


# -------------------------------------------------------------------------------- report


def summary(config: Config, results: Mapping[str, Any]) -> dict[str, Any]:
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


def report(config: Config, results: Mapping[str, Any], run_dir: Path) -> Any:
    from robustlab.reporting import Figure, ReportSpec, Section, Table

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
    sections = [Section(id="overview", title="What this study does", text="\n\n".join(intro))]
    face = results.get("one-face")
    if face:
        classes = list(face["images"][0]["scores"])
        rows = [
            [row["image"], *[row["scores"][c] for c in classes], row["predicted"], row["l2"]]
            for row in face["images"]
        ]
        source_rows = [[name, *scores] for name, scores in SOURCE_SCORES.items()]
        figures = [
            Figure(
                "one-face/faces.png",
                "Original, then the filtered image after each β (as in the source)",
            )
        ]
        figures += [
            Figure(f"one-face/filter_beta{beta:g}.png", f"The learned filter after β = {beta:g}")
            for beta in face["betas"]
        ]
        sections.append(
            Section(
                id="one-face",
                title=f"One face: {face['true']} → {face['target']}",
                text=f"Test image {face['index']}, true class {face['true']}; filters learned in turn "
                f"for β = {', '.join(f'{b:g}' for b in face['betas'])}, each starting from the last.",
                tables=[
                    Table(
                        ["image", *[f"score {c}" for c in classes], "predicted", "||Δ||₂"],
                        rows,
                        "Scores (logits) of the model",
                    ),
                    Table(
                        ["source image", "score man", "score woman"],
                        source_rows,
                        "The source's scores",
                    ),
                ],
                figures=figures,
            )
        )
    sweep = results.get("beta-sweep")
    if sweep:
        rows = [
            [
                r["beta"],
                r["success_rate"],
                r["mean_l2"],
                r["median_l2"],
                r["mean_l2_successful"],
                r["mean_linf"],
            ]
            for r in sweep["rows"]
        ]
        sections.append(
            Section(
                id="beta-sweep",
                title="Beyond the source: success and filter size against β",
                text=f"{sweep['faces']} test faces of the source class that the model classifies "
                f"correctly, {sweep['iterations']} iterations per β, each from a zero filter.",
                tables=[
                    Table(
                        [
                            "β",
                            "success rate",
                            "mean ||Δ||₂",
                            "median ||Δ||₂",
                            "mean ||Δ||₂ (successes)",
                            "mean ||Δ||∞",
                        ],
                        rows,
                    )
                ],
                figures=[
                    Figure(
                        "beta-sweep/beta_sweep.png", "Success rate and mean filter norm against β"
                    )
                ],
            )
        )
    return ReportSpec(
        title=config.title or "Targeted-face study: a filter that changes the predicted gender",
        subtitle=f"{config.model.arch} on {config.data.name}",
        sections=sections,
    )


def _pct(value: Any) -> str:
    return "?" if value is None else f"{value:.1%}"
