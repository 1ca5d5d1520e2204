"""Load, validate and run a study: a preset name or a YAML file -> a run directory with a report.

Reading order: ``load_study`` (YAML + ``--set`` overrides -> typed config, every name checked
against the registries) -> ``resolve_data`` (falls back to the config's ``fallback_data`` in one
logged line when the data set cannot be found or downloaded) -> ``run_study`` (the study's
steps through the resumable runner, then ``results.json`` and ``report.html``).

A study is a ``robustlab.studies.protocol.Study`` (config type, check, steps, summary, report),
registered by name in ``robustlab.studies.registry.STUDIES``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from robustlab.errors import UserError, unknown_name
from robustlab.io import write_json
from robustlab.studies.config import (
    AttackConfig,
    CurvesConfig,
    DataConfig,
    DefenceConfig,
    ModelConfig,
    StudyConfig,
    apply_overrides,
    format_loc,
    read_yaml,
    to_plain,
    validate,
)
from robustlab.studies.protocol import Study
from robustlab.studies.registry import STUDIES, get_study
from robustlab.studies.runner import (
    RESULTS,
    EpochObserver,
    Step,
    StepContext,
    StepObserver,
    format_seconds,
    prepare_run_dir,
    run_steps,
)

log = logging.getLogger(__name__)

PRESETS_DIR = Path(__file__).with_name("presets")
ALIASES = {"demo": "leaf"}
RESULTS_FORMAT = "robustlab-study-results"


@dataclasses.dataclass(frozen=True)
class LoadedStudy:
    """A validated study: ``name`` names the default run dir ``runs/<name>``."""

    name: str
    source: str  # the file it came from, for error messages
    config: StudyConfig
    definition: Study[Any] = dataclasses.field(repr=False)  # what the config is a study of
    argument: str = ""  # what the user named: a preset or a path

    def with_config(self, config: StudyConfig) -> LoadedStudy:
        return dataclasses.replace(self, config=config)


def list_presets() -> dict[str, str]:
    """Shipped preset names -> their titles."""
    presets = {}
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        presets[path.stem] = str(read_yaml(path).get("title", ""))
    return presets


def locate(study: str) -> tuple[str, Path]:
    """A preset name or a YAML path -> (run name, file)."""
    name = ALIASES.get(study, study)
    preset = PRESETS_DIR / f"{name}.yaml"
    if preset.is_file() and "/" not in study and not study.endswith((".yaml", ".yml", ".json")):
        return name, preset
    path = Path(study).expanduser()
    if path.is_file():
        return path.stem, path
    if path.suffix in (".yaml", ".yml", ".json") or "/" in study:
        raise UserError(f"study file not found: {path}")
    raise unknown_name("study preset", study, [*list_presets(), *ALIASES])


def load_study(study: str, overrides: Sequence[str] = ()) -> LoadedStudy:
    """Read a preset or YAML file, apply ``KEY=VALUE`` overrides, validate every field and name.

    Nothing runs here; every problem is ONE ``UserError`` line naming the file and key.
    """
    name, path = locate(study)
    source = path.name
    values = apply_overrides(read_yaml(path), overrides)
    kind = values.get("study")
    if not isinstance(kind, str):
        raise UserError(f"{source}: missing key 'study' (one of: {', '.join(STUDIES)})")
    definition = get_study(kind, source)
    config = validate(definition.config_type, values, source)
    check_names(config, source)
    try:
        definition.check(config)
    except UserError as error:
        raise UserError(f"{source}: {error}") from None
    return LoadedStudy(
        name=name, source=source, config=config, definition=definition, argument=study
    )


def iter_blocks(value: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every nested config block of a config, with its location (for name checks)."""
    if isinstance(value, BaseModel):
        yield loc, value
        for key in type(value).model_fields:
            yield from iter_blocks(getattr(value, key), (*loc, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from iter_blocks(item, (*loc, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, BaseModel | list | dict):
                yield from iter_blocks(item, (*loc, key))


def check_names(config: StudyConfig, source: str) -> None:
    """Check data set, task, architecture, attack and defence names against the registries."""
    for loc, block in iter_blocks(config):
        where = format_loc(loc)
        try:
            if isinstance(block, DataConfig):
                _check_data(block)
            elif block_is_built(block):  # a loaded run was checked when validated
                _check_model(block)
            elif isinstance(block, AttackConfig | DefenceConfig):
                block.build()
        except UserError as error:
            raise UserError(f"{source}: {where}: {error}") from None
    _check_models_take_the_data(config, source)
    _warn_where_results_mean_little(config, source)


def _check_models_take_the_data(config: StudyConfig, source: str) -> None:
    """A dry forward of one image on the meta device per model, when the study fixes the image
    size: a CNN too deep for 8 px images fails here, not after the first steps have run."""
    from robustlab.models.factory import check_model_cost

    data = getattr(config, "data", None)
    if not isinstance(data, DataConfig) or data.image_size is None:
        return  # the native size is known only once the data is read
    online = bool(getattr(config, "online", False))
    for loc, block in iter_blocks(config):
        if block_is_built(block) and (online or not str(loc[0]).startswith("online")):
            try:
                spec = block.model_spec()
                chans = data.channels or (len(spec.mean) if spec.mean else 3)
                spec = dataclasses.replace(spec, in_chans=chans, input_size=data.image_size)
                check_model_cost(spec)
            except UserError as error:
                raise UserError(f"{source}: {format_loc(loc)}: {error}") from None


def _warn_where_results_mean_little(config: StudyConfig, source: str) -> None:
    """A surrogate that is its own target makes the 'black-box' curve a white-box one."""
    target_model = getattr(config, "target", None)
    pairs = [("surrogate", getattr(config, "surrogate", None), target_model)]
    pairs += [
        (
            f"{format_loc(loc)}.surrogates",
            block.target or target_model,
            block.target or target_model,
        )
        for loc, block in iter_blocks(config)
        if isinstance(block, CurvesConfig)
        and (block.target or target_model) in (block.surrogates or [])
    ]
    for where, surrogate, attacked in pairs:
        if surrogate is not None and surrogate == attacked:
            log.warning(
                "%s: %s: '%s' is also the target, so its black-box curve is the white-box "
                "attack again and measures no transfer",
                source,
                where,
                surrogate,
            )


def block_is_built(block: Any) -> bool:
    """A model the study builds from its architecture (not one loaded from a run folder)."""
    return isinstance(block, ModelConfig) and block.run is None


def _check_data(block: DataConfig) -> None:
    from robustlab.data.registry import canonical_name, get_dataset

    spec = block.spec()
    if canonical_name(spec.name) is not None:
        get_dataset(spec.name).task(spec.task)
    elif "/" not in spec.name and Path(spec.name).suffix == "":
        get_dataset(spec.name)  # an unknown name that is no path: suggest a close one


def _check_model(block: ModelConfig) -> None:
    """Architecture name and weights source, checked without building the model."""
    from robustlab.models import BUILTINS
    from robustlab.models.pretrained import OFFLINE_ARCH

    block.train_config()
    block.model_spec()
    if block.arch not in BUILTINS:
        import timm

        if not timm.is_model(block.arch):
            raise unknown_name("architecture", block.arch, [*BUILTINS, *timm.list_models()])
    if block.pretrained == "offline" and block.arch.split(".")[0] != OFFLINE_ARCH:
        raise UserError(f"pretrained 'offline' exists only for {OFFLINE_ARCH}, not '{block.arch}'")
    if (
        block.pretrained not in (None, "imagenet", "offline")
        and not Path(block.pretrained).is_file()
    ):
        raise UserError(
            f"pretrained must be null, 'imagenet', 'offline' or a weights file, got '{block.pretrained}'"
        )


# --------------------------------------------------------------------------------------------
# Data fallback


def data_available(data: DataConfig, data_dir: str | Path | None) -> bool:
    """Whether ``data`` can be loaded: present in the data dir, or fetched now (when online)."""
    from robustlab.data import list_datasets, load_source, resolve_data_dir
    from robustlab.data.registry import canonical_name

    key = canonical_name(data.name)
    if key is None:  # a path, as given or under the data dir
        path = Path(data.name).expanduser()
        if not path.exists() and not (resolve_data_dir(data_dir) / path).exists():
            raise UserError(f"data path not found: {path} (data.name)")
        return True
    info = next(entry for entry in list_datasets(data_dir) if entry.name == key)
    if info.present:
        return True
    if not info.downloadable:
        return False
    try:
        load_source(data.spec(), data_dir)  # downloads when allowed
    except UserError as error:
        log.debug("data set %s unavailable: %s", key, error)
        return False
    return True


def resolve_data(study: LoadedStudy, data_dir: str | Path | None = None) -> LoadedStudy:
    """Switch to the config's ``fallback_data`` (one logged line) when ``data`` is unavailable."""
    config = study.config
    if data_available(config.data, data_dir):
        return study
    if config.fallback_data is None:
        from robustlab.data import load_source

        load_source(config.data.spec(), data_dir)  # raises the data layer's own clear error
    fallback = config.fallback_data
    assert fallback is not None
    note = (
        f"data set '{config.data.name}' not found or downloadable (see 'robustlab data list'); "
        f"running the same study on '{fallback.name}' instead"
    )
    log.warning("%s", note)
    resolved = config.model_copy(
        update={"data": fallback, "fallback_data": None, "notes": [*config.notes, note]}
    )
    return study.with_config(type(config).model_validate(to_plain(resolved)))


# --------------------------------------------------------------------------------------------
# Running


def run_study(
    study: LoadedStudy,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    restart: bool = False,
    progress: bool = False,
    observer: StepObserver | None = None,
    device: str = "cpu",
    on_epoch: EpochObserver | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``study`` in ``out``; returns what ``results.json`` holds.

    ``device``: where every step trains and runs its models (not part of the config: a run
    resumed on another device continues). ``observer`` / ``on_epoch``: told of every step and
    of every training epoch as they end (live tracking).

    The data set must already be resolved (``resolve_data``). ``out`` is created, or must hold
    a run of the identical resolved config (else a ``UserError`` suggests --out / --restart).
    """
    out = Path(out)
    config = study.config
    plain = to_plain(config)
    prepare_run_dir(out, plain, restart=restart)
    steps: list[Step] = [*study.definition.steps(config), _report_step(study)]
    outcome = run_steps(
        out,
        steps,
        seed=config.seed,
        data_dir=data_dir,
        progress=progress,
        observer=observer,
        device=device,
        on_epoch=on_epoch,
    )
    return _results(study, outcome["steps"], outcome["timings"])


def _results(
    study: LoadedStudy, steps: Mapping[str, Any], timings: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "format": RESULTS_FORMAT,
        "format_version": 1,
        "study": study.config.study,
        "title": study.config.title,
        "notes": list(study.config.notes),
        "steps": {name: result for name, result in steps.items() if name != "report"},
        "timings": {name: timing for name, timing in timings.items() if name != "report"},
    }


def _report_step(study: LoadedStudy) -> Step:
    def run(ctx: StepContext) -> dict[str, Any]:
        from robustlab.reporting import render_report

        results = _results(study, ctx.results, ctx.timings)
        write_json(ctx.run_dir / RESULTS, results)
        spec = study.definition.report(study.config, results["steps"], ctx.run_dir)
        spec.sections.append(run_section(study, results))
        path = render_report(ctx.run_dir, spec)
        return {"report": path.name}

    return Step("report", "write results.json and report.html", run, 3.0, record=False)


def run_section(study: LoadedStudy, results: Mapping[str, Any]) -> Any:
    """The config and per-step timings, last in every study report."""
    from robustlab.reporting import Section, Table, settings_table

    rows = [
        [name, format_seconds(timing.get("seconds", 0.0)), timing.get("peak_rss_mb")]
        for name, timing in results["timings"].items()
    ]
    text = "\n\n".join(
        [
            f"Study '{study.name}' ({study.source}); run again with: robustlab run "
            f"{study.argument or study.source} and the same --set options.",
            *study.config.notes,
        ]
    )
    return Section(
        id="run-details",
        title="Run details",
        text=text,
        tables=[
            Table(["step", "time", "peak RSS so far (MiB)"], rows, "Steps"),
            settings_table(to_plain(study.config), "Resolved config"),
        ],
    )
